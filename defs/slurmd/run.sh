#!/bin/sh
set -eu
: "${SMS_PROVISION_IP:?provision_ip (the slurmctld address) missing from site.env}"
install -d -m 0755 /var/spool/slurmd /var/log/slurm /run/slurm
i=0
while [ ! -S /run/munge/munge.socket.2 ] && [ $i -lt 50 ]; do sleep 0.1; i=$((i + 1)); done
# As OpenHPC 3.x compute nodes do: no local slurm.conf, ask the controller.
exec slurmd -D --conf-server "$SMS_PROVISION_IP"
