# Keys are a site secret; the package may have generated one.
rm -f /etc/chrony/chrony.keys
install -d -m 0755 /etc/chrony
