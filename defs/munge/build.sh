# Debian's postinst generates a key: an image must never carry one.
rm -f /etc/munge/munge.key
