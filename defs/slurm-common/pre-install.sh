# OpenHPC nodes run Slurm as UID/GID 202 and slurmd rejects privileged RPCs from
# any other UID: create the user before the package does (Debian would pick 64030).
case "$SMS_FAMILY" in
debian)
    getent group slurm >/dev/null || groupadd --system --gid 202 slurm
    getent passwd slurm >/dev/null || useradd --system --uid 202 --gid 202 \
        --home-dir /var/lib/slurm --no-create-home --shell /usr/sbin/nologin slurm
    ;;
el)
    getent group slurm >/dev/null || groupadd -r -g 202 slurm
    getent passwd slurm >/dev/null || useradd -r -u 202 -g slurm -d /etc/slurm -s /sbin/nologin slurm
    ;;
esac
[ "$(id -u slurm)" = 202 ] || { echo "slurm user has UID $(id -u slurm), OpenHPC needs 202" >&2; exit 1; }
