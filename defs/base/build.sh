# The image's own supervisor config lives under /etc/sms-services (from files/);
# the distribution's default one must not start a second set of programs.
rm -f /etc/supervisor/conf.d/* 2>/dev/null || true
mkdir -p /var/log/sms-services /run/sms-services
