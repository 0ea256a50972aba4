# The database is state: it is created in the overlay at first start, not here.
rm -rf /var/lib/mysql/* /etc/mysql/debian.cnf
