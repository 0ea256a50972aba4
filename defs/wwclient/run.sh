#!/bin/sh
set -eu
if [ -z "${SMS_WWCLIENT_SERVER:-}" ]; then
    echo "wwclient: no wwclient_server in the site config; file sync disabled"
    exec sleep infinity
fi
install -d -m 0700 /var/lib/sms-wwclient
# Settings come from the environment (site.env, release.env): see the client's --help.
exec python3 /usr/libexec/sms-services/wwclient/sms-wwclient --state /var/lib/sms-wwclient
