#!/bin/sh
set -eu
install -d -o _chrony -g _chrony -m 0750 /var/lib/chrony 2>/dev/null || install -d -m 0750 /var/lib/chrony
install -d -m 0755 /run/chrony
# -x: serve time, never set the host's clock (the host keeps its own NTP).
exec chronyd -d -x -f /etc/chrony/chrony.conf
