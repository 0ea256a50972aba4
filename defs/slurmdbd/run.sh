#!/bin/sh
set -eu
conf=/etc/slurm/slurmdbd.conf
[ -s "$conf" ] || { echo "slurmdbd: no $conf; render the site config into the overlay" >&2; exit 1; }
chown slurm:slurm "$conf"; chmod 0600 "$conf"
install -d -o slurm -g slurm -m 0755 /var/log/slurm
pass=$(sed -n 's/^StoragePass=//p' "$conf")
i=0
until mariadb -e 'select 1' >/dev/null 2>&1; do
    i=$((i + 1)); [ $i -lt 100 ] || { echo "slurmdbd: mariadb did not answer" >&2; exit 1; }
    sleep 0.2
done
mariadb <<SQL
CREATE DATABASE IF NOT EXISTS slurm_acct_db;
CREATE USER IF NOT EXISTS 'slurm'@'localhost' IDENTIFIED BY '$pass';
ALTER USER 'slurm'@'localhost' IDENTIFIED BY '$pass';
GRANT ALL ON slurm_acct_db.* TO 'slurm'@'localhost';
SQL
exec slurmdbd -D
