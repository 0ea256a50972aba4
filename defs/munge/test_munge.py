"""The munge fragment renders exactly as defs/munge/golden.txt says (SMS_UPDATE_GOLDEN=1 to accept a change)."""

from sms_services.image.golden import fragment_golden_test

test_munge_renders_as_golden = fragment_golden_test(__file__)
