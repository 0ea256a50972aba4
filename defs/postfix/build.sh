# ssl-cert generated a private key at install time: a secret, never in the image.
rm -f /etc/ssl/private/ssl-cert-snakeoil.key /etc/ssl/certs/ssl-cert-snakeoil.pem
rm -f /etc/postfix/main.cf
