#!/bin/sh
set -eu
conf=/etc/slurm/slurm.conf
[ -s "$conf" ] || { echo "slurmctld: no $conf; render the site config into the overlay" >&2; exit 1; }
install -d -o slurm -g slurm -m 0755 /var/spool/slurmctld /var/log/slurm
# Wait for munged: slurmctld refuses to start without it, and supervisord
# starts programs in order but does not wait for readiness.
i=0
# (every 20 ms: this wait is part of a cutover's service gap)
while [ ! -S /run/munge/munge.socket.2 ] && [ $i -lt 250 ]; do sleep 0.02; i=$((i + 1)); done
exec slurmctld -D
