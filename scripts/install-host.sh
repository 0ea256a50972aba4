#!/usr/bin/env bash
# install-host.sh - prepare a build/test host for sms-services (run as root).
#
# Ensures, idempotently (a second run changes nothing and takes a second or two):
#   1. a container runtime: an existing `apptainer` >= 1.3 or SingularityCE >= 4.1
#      on PATH is kept; otherwise Apptainer is installed from Debian sid (step 3);
#   2. the Debian packages the project needs on the host (apt, bookworm versions);
#   3. Apptainer from sid WITHOUT sid's glibc: the sid source is pinned to -1, the
#      .debs are fetched with `apt-get download`, the apptainer .deb is unpacked
#      into / (not registered with dpkg: its libc6 >= 2.38 dependency would block
#      every later apt-get install), sid's libc6 is unpacked into $GLIBC_DIR, and
#      every ELF executable of the package that needs a newer glibc gets
#      `patchelf --set-interpreter $GLIBC_DIR/ld-linux... --force-rpath --set-rpath
#      $GLIBC_DIR:/lib/<triplet>:...` (DT_RPATH, not RUNPATH, so that libm & co. pulled
#      in by host libraries such as libsqlite3 also come from $GLIBC_DIR); files
#      already present under /etc (e.g. a tuned apptainer.conf) are never overwritten;
#      offsetpreload.so (an LD_PRELOAD library for the host's fuse2fs, so it must use
#      the host's glibc) gets its C23 __isoc23_strto* imports rebound to the
#      equivalent C99 strto* functions;
#   4. a /etc/subuid and /etc/subgid range for root (needed by `build --fakeroot`);
#   5. the session directory, and `cni plugin path` in apptainer.conf pointing at
#      Debian's containernetworking-plugins (root default capabilities is left alone).
# Anything that cannot work (not Debian, apt fails) ends with ONE line saying what to
# install by hand, and a non-zero exit. Command output goes to $LOG.
#
# Environment:
#   SMS_FORCE_APPTAINER=1   reinstall Apptainer from sid even if a usable one exists
#   SMS_DEBIAN_MIRROR=URL   Debian archive for sid (default: the one apt uses now)
#   SMS_PREFIX=DIR          where the private glibc goes (default /opt/sms-services)
set -Eeuo pipefail
shopt -s nullglob

PREFIX=${SMS_PREFIX:-/opt/sms-services}
GLIBC_DIR=$PREFIX/glibc
STATE=$PREFIX/apptainer-from-sid.state
LOG=/var/log/sms-services-install-host.log
SID_SOURCES=/etc/apt/sources.list.d/sms-services-sid.sources
SID_PREFS=/etc/apt/preferences.d/sms-services-sid
MIN_APPTAINER=1.3
MIN_SINGULARITY=4.1
# Host packages (Debian 12 names). libseccomp2/libsqlite3-0 are apptainer's runtime
# libraries; squashfuse/fuse2fs/fuse-overlayfs let apptainer mount images with FUSE
# when it runs in a user namespace (--userns, non-root users); debian-archive-keyring
# and gpgv let debootstrap verify suites. docker-registry is the OCI registry (the
# CNCF distribution) that the oras:// library tests start on 127.0.0.1. systemd gives
# systemd-analyze, which checks the units smsctl unit writes (the host needs no systemd PID 1).
# pacemaker, corosync, pacemaker-cli-utils and resource-agents run the HA pair (smsctl ha,
# the OCF agent, ocf-tester in the tests, whose meta-data lint is libxml2-utils' xmllint;
# iputils-arping: ocf:heartbeat:ethmonitor, which watches the bridges, refuses to run without it);
# the lab starts them without systemd.
HOST_PKGS=(squashfs-tools e2fsprogs systemd uidmap containernetworking-plugins debootstrap
  patchelf python3-venv python3-pip git iproute2 iptables ca-certificates curl
  libseccomp2 libsqlite3-0 squashfuse fuse2fs fuse-overlayfs debian-archive-keyring gpgv xz-utils cpio docker-registry
  pacemaker corosync pacemaker-cli-utils resource-agents libxml2-utils iputils-arping)
HINT="install Apptainer >= $MIN_APPTAINER or SingularityCE >= $MIN_SINGULARITY, plus squashfs-tools, e2fsprogs, uidmap, containernetworking-plugins and debootstrap, by hand"

export DEBIAN_FRONTEND=noninteractive LC_ALL=C
START=$SECONDS
TMP=
STEP=start

say() { printf 'install-host: %s\n' "$*"; }
# The one line for a host we cannot set up.
cannot() { printf 'install-host: %s; %s, then re-run.\n' "$1" "$HINT" >&2; exit 1; }
die() { printf 'install-host: FAILED at step "%s": %s (details: %s)\n' "$STEP" "$1" "$LOG" >&2; exit 1; }
POLICY=/usr/sbin/policy-rc.d
OWN_POLICY=0
cleanup() {   # temp dir + half-written files of an interrupted run
  [[ -n $TMP && -d $TMP ]] && rm -rf -- "$TMP"
  ((OWN_POLICY)) && rm -f -- "$POLICY"
  rm -rf -- "$GLIBC_DIR.new" "$SID_SOURCES.sms-tmp" "$SID_PREFS.sms-tmp" "${CONF:-/nonexistent}.sms-tmp"
  return 0
}
trap cleanup EXIT
trap 'die "command failed (line $LINENO)"' ERR
run() { printf '+ %s\n' "$*" >>"$LOG"; "$@" >>"$LOG" 2>&1; }

version_ge() { [[ "$(printf '%s\n%s\n' "$2" "$1" | sort -V | head -n1)" == "$2" ]]; }

# write_if_changed PATH CONTENT -> returns 0 if the file was (re)written
write_if_changed() {
  if [[ -f $1 ]] && [[ "$(cat -- "$1")" == "$2" ]]; then return 1; fi
  printf '%s\n' "$2" >"$1.sms-tmp" && mv -f -- "$1.sms-tmp" "$1"
}

apt_update() { run apt-get update || cannot "apt-get update failed (log: $LOG)"; }
missing_pkgs() {
  local p st
  for p in "$@"; do
    st=$(dpkg-query -W -f='${db:Status-Status}' "$p" 2>/dev/null) || st=
    [[ $st == installed ]] || printf '%s\n' "$p"
  done
}

# ---------------------------------------------------------------- preflight
[[ ${1:-} == -h || ${1:-} == --help ]] && { awk 'NR > 1 && !/^#/ {exit} NR > 1 {print}' "$0"; exit 0; }
[[ $(id -u) == 0 ]] || { printf 'install-host: must run as root (try: sudo %s)\n' "$0" >&2; exit 1; }
{ : >>"$LOG"; } 2>/dev/null || LOG=$(mktemp /tmp/sms-services-install-host.XXXXXX.log)
printf '\n=== %s install-host.sh run ===\n' "$(date -Is)" >>"$LOG"
LOCK=/run/lock/sms-services-install-host.lock; [[ -w /run/lock ]] || LOCK=/tmp/sms-services-install-host.lock
exec 9>"$LOCK"
flock -w 900 9 || die "another install-host.sh is still running"

# ---------------------------------------------------------------- 1. existing runtime
STEP="runtime check"
RUNTIME='' RUNTIME_VER=''
probe_runtime() {
  local out
  RUNTIME='' RUNTIME_VER=''
  if command -v apptainer >/dev/null 2>&1 && out=$(apptainer --version 2>/dev/null) &&
     [[ $out =~ ^apptainer\ version\ ([0-9][0-9.]*) ]] && version_ge "${BASH_REMATCH[1]}" "$MIN_APPTAINER"; then
    RUNTIME=apptainer RUNTIME_VER=${BASH_REMATCH[1]}; return 0
  fi
  if command -v singularity >/dev/null 2>&1 && out=$(singularity --version 2>/dev/null) &&
     [[ $out =~ ^singularity-ce\ version\ ([0-9][0-9.]*) ]] && version_ge "${BASH_REMATCH[1]}" "$MIN_SINGULARITY"; then
    RUNTIME=singularity RUNTIME_VER=${BASH_REMATCH[1]}; return 0
  fi
  return 1
}
INSTALL_APPTAINER=1
if [[ ${SMS_FORCE_APPTAINER:-0} != 1 ]] && probe_runtime; then
  INSTALL_APPTAINER=0
  say "runtime: $RUNTIME $RUNTIME_VER found at $(command -v "$RUNTIME"), keeping it"
fi

# Steps 2-3 need Debian's apt. Elsewhere only an existing runtime plus the host
# commands the project calls will do.
# shellcheck source=/dev/null
. /etc/os-release 2>/dev/null || true
if [[ ${ID:-} != debian ]] || ! command -v apt-get >/dev/null || ! command -v dpkg >/dev/null; then
  WHAT="this host is not Debian (${PRETTY_NAME:-unknown OS}) and the script only knows Debian's apt"
  ((INSTALL_APPTAINER)) && cannot "$WHAT"
  LACK=()
  for c in mksquashfs unsquashfs newuidmap newgidmap debootstrap ip iptables git curl python3; do
    command -v "$c" >/dev/null 2>&1 || LACK+=("$c")
  done
  ((${#LACK[@]} == 0)) || cannot "$WHAT, and ${LACK[*]} missing"
  say "host packages: not Debian, apt skipped; the commands needed are present"
else
  ((INSTALL_APPTAINER)) &&
    say "runtime: no apptainer >= $MIN_APPTAINER / SingularityCE >= $MIN_SINGULARITY on PATH, will install Apptainer from Debian sid"
  ARCH=$(dpkg --print-architecture)
  case $ARCH in
    amd64) TRIPLET=x86_64-linux-gnu LDSO=ld-linux-x86-64.so.2 ;;
    arm64) TRIPLET=aarch64-linux-gnu LDSO=ld-linux-aarch64.so.1 ;;
    *) ((INSTALL_APPTAINER)) && cannot "no recipe for architecture $ARCH" ;;
  esac

  # -------------------------------------------------------------- 2. host packages
  STEP="apt packages"
  mapfile -t MISSING < <(missing_pkgs "${HOST_PKGS[@]}")
  if ((${#MISSING[@]})); then
    apt_update
    # Debian starts corosync and pacemaker on install, as a one-node cluster of its default
    # corosync.conf: on an infrastructure host that is a cluster nobody configured. They
    # are kept from starting (a policy-rc.d of our own, only if the host has none) and
    # from starting at boot; `smsctl ha` and the admin configure the pair first.
    NEW_HA=$(printf '%s\n' "${MISSING[@]}" | grep -xE 'corosync|pacemaker' || true)
    if [[ -n $NEW_HA && ! -e $POLICY && ! -L $POLICY ]]; then
      (set -C; printf '#!/bin/sh\n# install-host.sh, while it installs: no corosync/pacemaker start\ncase "$1" in corosync|pacemaker|corosync.service|pacemaker.service) exit 101 ;; esac\nexit 0\n' >"$POLICY") &&
        chmod 0755 "$POLICY" && OWN_POLICY=1
    fi
    run apt-get install -y --no-install-recommends "${MISSING[@]}" ||
      cannot "apt-get install ${MISSING[*]} failed (log: $LOG)"
    if ((OWN_POLICY)); then rm -f -- "$POLICY"; OWN_POLICY=0; fi
    if [[ -n $NEW_HA ]]; then
      for unit in $NEW_HA; do
        run systemctl disable "$unit.service" || true  # (works without systemd running: links only)
      done
      say "apt packages: $(echo $NEW_HA) installed but not started nor enabled at boot; configure the pair first (README, HA pair)"
    fi
    say "apt packages: installed ${MISSING[*]}"
  else
    say "apt packages: all ${#HOST_PKGS[@]} present"
  fi
fi

# ---------------------------------------------------------------- 3. Apptainer from sid
STEP="apptainer from sid"
PY=/usr/bin/python3   # the system python (not a pyenv shim)

# Rebind C23 __isoc23_strto* imports (glibc 2.38) of a shared library to the C99
# strto* functions of the same name suffix (identical except for accepting "0b"
# prefixes), and drop the then-unused GLIBC_2.38+ version needs. For
# offsetpreload.so, which apptainer LD_PRELOADs into the HOST's fuse2fs.
patch_isoc23() {
  "$PY" - "$1" <<'PYEOF'
import struct, sys
path = sys.argv[1]
d = bytearray(open(path, 'rb').read())
if d[:4] != b'\x7fELF' or d[4] != 2 or d[5] != 1:
    sys.exit("not a 64-bit little-endian ELF")
shoff, = struct.unpack_from('<Q', d, 0x28)
shentsize, shnum = struct.unpack_from('<HH', d, 0x3a)
# section header: name type flags addr offset size link info align entsize
secs = [struct.unpack_from('<IIQQQQIIQQ', d, shoff + i * shentsize) for i in range(shnum)]
def sec(t): return next(s for s in secs if s[1] == t)
def cstr(o): return d[o:d.index(b'\0', o)].decode()
dynsym, versym, verneed = sec(11), sec(0x6fffffff), sec(0x6ffffffe)
dynstr, vstr = secs[dynsym[6]][4], secs[verneed[6]][4]
nsym = dynsym[5] // 24

def libc_need():
    """(offset of libc's Verneed, [(offset of Vernaux, version name, index), ...])"""
    off = verneed[4]
    while True:
        _, cnt, vfile, vaux, vnext = struct.unpack_from('<HHIII', d, off)
        if cstr(vstr + vfile) == 'libc.so.6':
            auxs, a = [], off + vaux
            for _ in range(cnt):
                _, _, other, name, anext = struct.unpack_from('<IHHII', d, a)
                auxs.append((a, cstr(vstr + name), other))
                a += anext
            return off, auxs
        if not vnext:
            sys.exit("no libc.so.6 version needs")
        off += vnext

# 1. __isoc23_strtoX@GLIBC_2.38 -> strtoX@GLIBC_2.2.5 (same function without "0b" parsing)
ok = {'strtol', 'strtoul', 'strtoll', 'strtoull', 'strtoimax', 'strtoumax',
      'wcstol', 'wcstoul', 'wcstoll', 'wcstoull', 'wcstoimax', 'wcstoumax'}
base_idx = next(i for _, n, i in libc_need()[1] if n == 'GLIBC_2.2.5')
for i in range(nsym):
    so = dynsym[4] + i * 24
    st_name, = struct.unpack_from('<I', d, so)
    shndx, = struct.unpack_from('<H', d, so + 6)
    name = cstr(dynstr + st_name)
    if name.startswith('__isoc23_') and shndx == 0:
        if name[9:] not in ok:
            sys.exit("cannot rebind " + name)
        struct.pack_into('<I', d, so, st_name + 9)              # name suffix: "strtol"
        struct.pack_into('<H', d, versym[4] + 2 * i, base_idx)  # version GLIBC_2.2.5

# 2. drop libc version needs >= GLIBC_2.38 that no symbol uses any more
used = {struct.unpack_from('<H', d, versym[4] + 2 * i)[0] & 0x7fff for i in range(nsym)}
while True:
    vn, auxs = libc_need()
    k = next((k for k, (_, n, i) in enumerate(auxs) if i not in used and
              n.startswith('GLIBC_2.') and int(n.split('.')[1]) >= 38), None)
    if k is None:
        break
    a = auxs[k][0]
    anext, = struct.unpack_from('<I', d, a + 12)
    cnt, = struct.unpack_from('<H', d, vn + 2)
    if k == 0:
        struct.pack_into('<I', d, vn + 8, a + anext - vn)        # vn_aux skips it
    else:
        p = auxs[k - 1][0]
        pnext, = struct.unpack_from('<I', d, p + 12)
        struct.pack_into('<I', d, p + 12, pnext + anext if anext else 0)
    struct.pack_into('<H', d, vn + 2, cnt - 1)
left = [n for _, n, _ in libc_need()[1] if int(n.split('.')[1]) >= 38]
if left:
    sys.exit("still needs " + " ".join(left))
open(path, 'wb').write(d)
PYEOF
}

# unresolved FILE [LDSO]: print what the dynamic loader cannot resolve for FILE
unresolved() { { "${2:-/lib64/$LDSO}" --list "$1" 2>&1 || true; } | grep -E "not found|error" || true; }

install_apptainer_from_sid() {
  local mirror changed=0 app_ver libc_ver f dep name op ver inst
  mirror=${SMS_DEBIAN_MIRROR:-$(apt-cache policy 2>/dev/null |
    awk -v c="${VERSION_CODENAME:-bookworm}/main" '!f && $3 == c && $2 ~ /^https?:/ {print $2; f=1}')}
  mirror=${mirror:-http://deb.debian.org/debian}

  write_if_changed "$SID_SOURCES" "# Written by sms-services scripts/install-host.sh. Debian sid is used only to
# \`apt-get download\` apptainer and libc6; $SID_PREFS pins it to -1 so
# apt never installs anything from it.
Types: deb
URIs: $mirror
Suites: sid
Components: main
Signed-By: /usr/share/keyrings/debian-archive-keyring.gpg" && changed=1
  write_if_changed "$SID_PREFS" "# Written by sms-services scripts/install-host.sh: never install from sid.
Package: *
Pin: release n=sid
Pin-Priority: -1" && changed=1
  if ((changed)) || ! apt-cache show apptainer/sid >/dev/null 2>&1; then apt_update; fi
  app_ver=$(apt-cache show apptainer/sid 2>/dev/null | awk '!f && /^Version:/ {print $2; f=1}')
  libc_ver=$(apt-cache show libc6/sid 2>/dev/null | awk '!f && /^Version:/ {print $2; f=1}')
  [[ -n $app_ver && -n $libc_ver ]] || cannot "apptainer/libc6 not found in Debian sid at $mirror (log: $LOG)"
  say "sid source: $SID_SOURCES (pin -1, $mirror): apptainer $app_ver, libc6 $libc_ver"

  # Runtime dependencies other than libc6 must be satisfied by installed bookworm packages.
  while read -r dep; do
    [[ $dep =~ ^([a-z0-9.+-]+)(\ \((>=|>>|=|<=|<<)\ ([^\)]+)\))?$ ]] || die "cannot parse dependency '$dep'"
    name=${BASH_REMATCH[1]} op=${BASH_REMATCH[3]} ver=${BASH_REMATCH[4]}
    [[ $name == libc6 ]] && continue
    if [[ $(dpkg-query -W -f='${db:Status-Status}' "$name" 2>/dev/null) != installed ]]; then
      run apt-get install -y --no-install-recommends "$name" || cannot "apt-get install $name failed (log: $LOG)"
    fi
    inst=$(dpkg-query -W -f='${Version}' "$name")
    [[ -z $op ]] || dpkg --compare-versions "$inst" "$op" "$ver" ||
      cannot "apptainer $app_ver needs $name $op $ver, host has $inst"
  done < <(apt-cache show "apptainer=$app_ver" | awk -F': ' '!f && /^Depends:/ {print $2; f=1}' |
           tr ',' '\n' | sed 's/^ *//; s/ *$//; s/ *|.*//')

  TMP=$(mktemp -d /tmp/sms-install-host.XXXXXX)
  chmod 755 "$TMP"; chown _apt "$TMP" 2>/dev/null || true   # apt-get download runs as _apt
  (cd "$TMP" && run apt-get download "apptainer/sid" "libc6/sid") || cannot "apt-get download apptainer/sid libc6/sid failed (log: $LOG)"
  mkdir "$TMP/app" "$TMP/libc"
  run dpkg-deb -x "$TMP"/apptainer_*.deb "$TMP/app"
  run dpkg-deb -x "$TMP"/libc6_*.deb "$TMP/libc"

  # Private glibc: the library directory of sid's libc6 (merged-/usr or not).
  local src=$TMP/libc/usr/lib/$TRIPLET
  [[ -e $src/$LDSO ]] || src=$TMP/libc/lib/$TRIPLET
  [[ -e $src/$LDSO && -e $src/libc.so.6 ]] || die "sid libc6 has no $LDSO"
  rm -rf "$GLIBC_DIR.new"; mkdir -p "$PREFIX" "$GLIBC_DIR.new"
  cp -a "$src/." "$GLIBC_DIR.new/"
  rm -rf "$GLIBC_DIR"; mv "$GLIBC_DIR.new" "$GLIBC_DIR"

  # Patch, in the staging tree, every ELF file the host's loader cannot resolve.
  local patched=()
  while IFS= read -r -d '' f; do
    [[ $(head -c4 "$f" | od -An -c | tr -d ' ') == 177ELF ]] || continue
    [[ -n $(unresolved "$f") ]] || continue
    if patchelf --print-interpreter "$f" >/dev/null 2>&1; then
      run patchelf --set-interpreter "$GLIBC_DIR/$LDSO" --force-rpath --set-rpath "$GLIBC_DIR:/lib/$TRIPLET:/usr/lib/$TRIPLET" "$f"
      [[ -z $(unresolved "$f" "$GLIBC_DIR/$LDSO") ]] || die "${f#"$TMP"/app} still unresolved: $(unresolved "$f" "$GLIBC_DIR/$LDSO" | head -n1)"
    else
      patch_isoc23 "$f" >>"$LOG" 2>&1 || die "cannot make ${f#"$TMP"/app} load with the host glibc"
      [[ -z $(unresolved "$f") ]] || die "${f#"$TMP"/app} still unresolved: $(unresolved "$f" | head -n1)"
    fi
    patched+=("${f#"$TMP"/app}")
  done < <(find "$TMP/app" -type f -print0)

  # Copy into /: existing files under /etc are kept (local configuration).
  local keep=()
  for f in $(cd "$TMP/app" && find etc -type f); do
    [[ -e /$f ]] && keep+=("--exclude=./$f")
  done
  (cd "$TMP/app" && find ./etc ./usr \( -type f -o -type l \) | sed 's|^\.||' | sort) >"$PREFIX/apptainer-from-sid.files"
  tar -C "$TMP/app" -cf - ./etc ./usr | tar -C / -xpf - --no-overwrite-dir --keep-directory-symlink "${keep[@]}" >>"$LOG" 2>&1 ||
    die "copying apptainer into / failed"
  printf 'apptainer=%s\nlibc6=%s\nglibc_dir=%s\nmirror=%s\n' "$app_ver" "$libc_ver" "$GLIBC_DIR" "$mirror" >"$STATE"
  say "apptainer $app_ver: unpacked into / (not in dpkg), sid libc6 $libc_ver in $GLIBC_DIR, patched: ${patched[*]:-none}"
  probe_runtime || die "apptainer --version does not work after install: $(apptainer --version 2>&1 | head -n1)"
}
if ((INSTALL_APPTAINER)); then install_apptainer_from_sid; fi

# ---------------------------------------------------------------- 4. subuid/subgid
STEP="subuid/subgid"
ensure_subid() {   # ensure_subid FILE -> prints what it did
  local file=$1 start=100000 count=65536
  [[ -e $file ]] || : >"$file"
  if grep -qE '^(root|0):' "$file"; then echo "root present"; return; fi
  # first 65536-aligned range at or above 100000 that overlaps nobody's
  while awk -F: -v s="$start" -v e="$((start + count))" \
        'NF==3 && $2 < e && $2 + $3 > s {hit=1} END {exit !hit}' "$file"; do
    start=$((start + count))
  done
  printf 'root:%d:%d\n' "$start" "$count" >>"$file"
  echo "added root:$start:$count"
}
say "subuid: $(ensure_subid /etc/subuid); subgid: $(ensure_subid /etc/subgid)"

# ---------------------------------------------------------------- 5. dirs + conf
STEP="runtime configuration"
probe_runtime || die "no working runtime"
if [[ $RUNTIME == apptainer ]]; then
  SYSCONF=$(apptainer buildcfg SYSCONFDIR 2>/dev/null) || SYSCONF=/etc
  STATEDIR=$(apptainer buildcfg LOCALSTATEDIR 2>/dev/null) || STATEDIR=/var/lib
  LIBEXEC=$(apptainer buildcfg LIBEXECDIR 2>/dev/null) || LIBEXEC=/usr/libexec
else
  SYSCONF=$(singularity buildcfg SYSCONFDIR 2>/dev/null) || SYSCONF=/etc
  STATEDIR=$(singularity buildcfg LOCALSTATEDIR 2>/dev/null) || STATEDIR=/var/lib
  LIBEXEC=$(singularity buildcfg LIBEXECDIR 2>/dev/null) || LIBEXEC=/usr/libexec
fi
SESSION=$STATEDIR/$RUNTIME/mnt/session
# With `cni plugin path` unset, apptainer/singularity look in LIBEXECDIR/<name>/cni.
DEFAULT_CNI=$LIBEXEC/$RUNTIME/cni
if [[ -d $SESSION ]]; then MSG="session dir $SESSION present"; else mkdir -p "$SESSION"; MSG="session dir $SESSION created"; fi

CONF=$SYSCONF/$RUNTIME/$RUNTIME.conf
CNI_DIR=$(dpkg -L containernetworking-plugins 2>/dev/null | grep -m1 '/bridge$' || true)
CNI_DIR=${CNI_DIR%/bridge}
if [[ ! -f $CONF ]]; then
  MSG+="; $CONF missing, cni plugin path not checked"
elif [[ -z $CNI_DIR ]]; then
  MSG+="; containernetworking-plugins has no bridge plugin, cni plugin path not checked"
else
  CUR=$(sed -nE 's/^[[:space:]]*cni plugin path[[:space:]]*=[[:space:]]*(.*[^[:space:]])[[:space:]]*$/\1/p' "$CONF" | tail -n1)
  EFFECTIVE=${CUR:-$DEFAULT_CNI}
  if [[ $EFFECTIVE == "$CNI_DIR" ]]; then
    MSG+="; cni plugin path ok ($CNI_DIR${CUR:+, set in conf})"
  else
    cp -p "$CONF" "$CONF.sms-tmp"
    if [[ -n $CUR ]]; then
      sed -i -E "s|^[[:space:]]*cni plugin path[[:space:]]*=.*|cni plugin path = $CNI_DIR|" "$CONF.sms-tmp"
    elif grep -qE '^#[[:space:]]*cni plugin path[[:space:]]*=' "$CONF.sms-tmp"; then
      sed -i -E "0,/^#[[:space:]]*cni plugin path[[:space:]]*=.*/s||&\ncni plugin path = $CNI_DIR|" "$CONF.sms-tmp"
    else
      printf 'cni plugin path = %s\n' "$CNI_DIR" >>"$CONF.sms-tmp"
    fi
    mv -f "$CONF.sms-tmp" "$CONF"
    MSG+="; cni plugin path set to $CNI_DIR in $CONF (was ${EFFECTIVE:-unset})"
  fi
fi
say "config: $MSG"

STEP='done'
say "done: $($RUNTIME --version) ($((SECONDS - START)) s)"
