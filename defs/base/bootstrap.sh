# Keep the image small and builds repeatable: no recommends, no docs.
case "$SMS_FAMILY" in
debian)
    cat > /etc/apt/apt.conf.d/90sms-services <<'CONF'
APT::Install-Recommends "false";
APT::Install-Suggests "false";
Binary::apt-get::APT::Keep-Downloaded-Packages "true";
CONF
    cat > /etc/dpkg/dpkg.cfg.d/90sms-services <<'CONF'
path-exclude=/usr/share/doc/*
path-exclude=/usr/share/man/*
path-exclude=/usr/share/info/*
CONF
    ;;
el)
    echo "tsflags=nodocs" >> /etc/dnf/dnf.conf
    echo "install_weak_deps=False" >> /etc/dnf/dnf.conf
    ;;
esac
# debootstrap leaves every .deb it installed in the cache: not in our image.
if [ "$SMS_FAMILY" = debian ]; then apt-get clean; fi
