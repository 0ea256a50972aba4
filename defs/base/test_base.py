"""The base fragment renders exactly as defs/base/golden.txt says (SMS_UPDATE_GOLDEN=1 to accept a change)."""

from sms_services.image.golden import fragment_golden_test

test_base_renders_as_golden = fragment_golden_test(__file__)
