#!/bin/sh
set -eu
# Debian up to 12 puts the socket in /run/mysqld, MariaDB 11.8 packages in /run/mariadbd.
install -d -o mysql -g mysql -m 0755 /run/mysqld /run/mariadbd /var/log/mysql
install -d -o mysql -g mysql -m 0750 /var/lib/mysql
if [ ! -d /var/lib/mysql/mysql ]; then
    echo "mariadb: first start, creating the database in the overlay"
    mariadb-install-db --user=mysql --datadir=/var/lib/mysql --auth-root-authentication-method=socket >/dev/null
fi
# Accounting never leaves the instance: listen on loopback only.
# slurmdbd refuses MariaDB 11.8's default snapshot isolation; "loose-" keeps older MariaDB
# (which lacks the option) starting. The lock wait is what Slurm's accounting guide asks for.
exec mariadbd --user=mysql --bind-address=127.0.0.1 --skip-name-resolve \
    --loose-innodb-snapshot-isolation=OFF --innodb-lock-wait-timeout=900
