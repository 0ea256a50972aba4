#!/bin/sh
set -eu
[ -s /etc/postfix/main.cf ] || { echo "postfix: no /etc/postfix/main.cf; render the site config" >&2; exit 1; }
# Services in chroots need resolver files; postfix copies them in itself.
postfix set-permissions >/dev/null 2>&1 || true
newaliases
exec postfix start-fg
