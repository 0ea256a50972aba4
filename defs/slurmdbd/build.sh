rm -f /etc/slurm/slurmdbd.conf
