#!/bin/sh
set -eu
[ -s /etc/postfix/main.cf ] || { echo "postfix: no /etc/postfix/main.cf; render the site config" >&2; exit 1; }
postfix check
newaliases
# The master daemon itself in the foreground (-d), not `postfix start-fg`: that
# leaves master outside the supervisor's process group, so a stop would hang
# until the instance is killed.
exec "$(postconf -h daemon_directory)/master" -d
