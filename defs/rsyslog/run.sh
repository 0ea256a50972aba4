#!/bin/sh
set -eu
install -d -m 0755 /var/log/cluster
exec rsyslogd -n -iNONE -f /etc/rsyslog.conf
