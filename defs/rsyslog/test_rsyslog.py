"""The rsyslog fragment renders exactly as defs/rsyslog/golden.txt says (SMS_UPDATE_GOLDEN=1 to accept a change)."""

from sms_services.image.golden import fragment_golden_test

test_rsyslog_renders_as_golden = fragment_golden_test(__file__)
