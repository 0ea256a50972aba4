# ssl-cert generated a private key at install time: a secret, never in the image.
rm -f /etc/ssl/private/ssl-cert-snakeoil.key /etc/ssl/certs/ssl-cert-snakeoil.pem
# Newer Debian postfix creates /etc/aliases only when configured at install time.
[ -e /etc/aliases ] || printf 'postmaster: root\nabuse: root\n' > /etc/aliases
# Set the setgid bits now: at run time root lacks CAP_FSETID (least privilege),
# and mail(1) -> sendmail -> postdrop needs them to queue job notifications.
postfix set-permissions >/dev/null 2>&1 || true
