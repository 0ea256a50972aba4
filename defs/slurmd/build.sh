# Configless: slurmd fetches slurm.conf from slurmctld, so none is shipped.
rm -f /etc/slurm/slurm.conf
