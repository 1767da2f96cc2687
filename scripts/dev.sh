#!/bin/sh
# onion-gateway developer entry point for a Debian 12 / Ubuntu machine (run as root or with sudo).
#
#   sh scripts/dev.sh install   Debian packages (daemons kept from starting) + .venv with onion-gateway
#   sh scripts/dev.sh run       install, then serve the example config against a loopback DNS server
#                               publishing the example SRV record, and show Postfix's postmap -q answer
#   sh scripts/dev.sh test      install (with test extras), then run the whole test suite
#
# Package scripts must not start daemons: a stock tor would join the public Tor network. A policy-rc.d
# that exits 101 is put in place for the install and the previous one restored afterwards.
set -eu
cd "$(dirname "$0")/.."
ROOT=$(pwd)
VENV=${ONION_GATEWAY_VENV:-$ROOT/.venv}
PKGS="postfix tor torsocks dnsmasq swaks unbound knot knot-dnsutils python3-venv ca-certificates iproute2 systemd"

need_root() {
    if [ "$(id -u)" != 0 ]; then
        echo "scripts/dev.sh: run as root (sudo sh scripts/dev.sh $1): tests start private Postfix instances" >&2
        exit 64
    fi
}

install_debian() {
    missing=""
    for p in $PKGS; do
        dpkg-query -W -f '${Status}' "$p" 2>/dev/null | grep -q 'install ok installed' || missing="$missing $p"
    done
    [ -z "$missing" ] && return 0
    echo "installing Debian packages:$missing"
    prc=/usr/sbin/policy-rc.d
    saved=""
    if [ -e "$prc" ]; then saved=$(mktemp); cp -p "$prc" "$saved"; fi
    restore() { if [ -n "$saved" ]; then cp -p "$saved" "$prc"; rm -f "$saved"; else rm -f "$prc"; fi; }
    trap restore EXIT INT TERM
    printf '#!/bin/sh\n# onion-gateway install: never start daemons from package scripts\nexit 101\n' > "$prc"
    chmod 755 "$prc"
    debconf-set-selections <<PRESEED
postfix postfix/main_mailer_type select Local only
postfix postfix/mailname string $(hostname -f 2>/dev/null || hostname)
PRESEED
    export DEBIAN_FRONTEND=noninteractive
    apt-get -o DPkg::Lock::Timeout=600 update
    # shellcheck disable=SC2086
    apt-get install -y -o DPkg::Lock::Timeout=600 --no-install-recommends $missing
    restore
    trap - EXIT INT TERM
}

install_python() {
    extras=$1
    [ -x "$VENV/bin/python" ] || python3 -m venv "$VENV"
    "$VENV/bin/python" -m pip install --quiet --disable-pip-version-check -e "$ROOT[$extras]"
}

cmd=${1:-}
case "$cmd" in
    install)
        need_root install; install_debian; install_python run ;;
    run)
        need_root run; install_debian; install_python run
        exec "$VENV/bin/python" "$ROOT/scripts/demo.py" ;;
    test)
        need_root test; install_debian; install_python test
        shift
        exec "$VENV/bin/python" -m pytest "$@" ;;
    *)
        echo "usage: sh scripts/dev.sh install|run|test [pytest args]" >&2; exit 64 ;;
esac
