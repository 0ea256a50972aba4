# slurm.conf is the site's: it is rendered into the overlay, never shipped.
rm -f /etc/slurm/slurm.conf /etc/slurm-llnl/slurm.conf
install -d -m 0755 /etc/slurm
