#!/bin/sh
set -eu
# cronie's crond runs in the foreground with -n; Debian's cron with -f.
if command -v crond >/dev/null 2>&1; then exec crond -n -s; fi
exec cron -f
