#!/bin/sh
set -eu
key=/etc/munge/munge.key
if [ ! -s "$key" ]; then
    echo "munge: no key at $key; put the site's key in the overlay (or let wwclient sync it)" >&2
    exit 1
fi
install -d -o munge -g munge -m 0755 /run/munge
install -d -o munge -g munge -m 0700 /var/lib/munge /var/log/munge
chown munge:munge "$key"; chmod 0400 "$key"
exec setpriv --reuid=munge --regid=munge --init-groups munged --foreground
