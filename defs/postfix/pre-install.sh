# No questions at install time: the site's main.cf comes from the overlay.
if [ "$SMS_FAMILY" = debian ]; then
    echo "postfix postfix/main_mailer_type select No configuration" | debconf-set-selections
fi
