#!/bin/sh
# onion-gateway developer entry point for a Debian 12 / Ubuntu machine (run as root or with sudo).
#
#   sh scripts/dev.sh install   Debian packages (daemons kept from starting) + .venv with onion-gateway
#   sh scripts/dev.sh run       install, then serve the example config against a loopback DNS server
#                               publishing the example SRV record, and show Postfix's postmap -q answer
#   sh scripts/dev.sh test      install (with test extras), run the whole test suite in the venv, then the
#                               Debian job below (skipped when pytest arguments are given)
#   sh scripts/dev.sh package   build the Debian package into dist/ (no tests)
#   sh scripts/dev.sh deb       build the .deb with Debian's own Python libraries, lintian it, install it,
#                               and run the unit, integration and package tests against the installed
#                               package with /usr/bin/python3 (no venv)
#
# Package scripts must not start daemons: a stock tor would join the public Tor network. A policy-rc.d
# that exits 101 is put in place for the install and the previous one restored afterwards.
set -eu
cd "$(dirname "$0")/.."
ROOT=$(pwd)
VENV=${ONION_GATEWAY_VENV:-$ROOT/.venv}
PKGS="postfix postfix-pcre dovecot-core tor torsocks dnsmasq swaks unbound knot knot-dnsutils python3-venv ca-certificates iproute2 systemd"
# The Debian job: build dependencies, Debian's Python libraries and test tools for /usr/bin/python3.
DEB_PKGS="debhelper dh-python pybuild-plugin-pyproject python3-all python3-setuptools python3-wheel
 bash-completion lintian man-db python3-click python3-dnspython python3-idna python3-jinja2 python3-stem
 python3-prometheus-client python3-click-man python3-pytest python3-hypothesis python3-yaml"
DEB_PATH=/usr/sbin:/usr/bin:/sbin:/bin      # Debian's python3 first, whatever python a developer has

need_root() {
    if [ "$(id -u)" != 0 ]; then
        echo "scripts/dev.sh: run as root (sudo sh scripts/dev.sh $1): tests start private Postfix instances" >&2
        exit 64
    fi
}

install_debian() {
    missing=""
    for p in ${1:-$PKGS}; do
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

deb_build() {
    # Build the .deb in a fresh work directory $work (dpkg-buildpackage writes into the tree and puts
    # the .deb in its parent); sets $deb.
    install_debian "$DEB_PKGS"
    work=$(mktemp -d /tmp/onion-gateway-deb.XXXXXX)
    mkdir "$work/src" "$work/run"
    tar -C "$ROOT" --exclude=./.venv --exclude=./.git --exclude=./.pybuild --exclude=./dist -cf - . | tar -C "$work/src" -xf -
    (cd "$work/src" && env PATH="$DEB_PATH" dpkg-buildpackage -us -uc -b) > "$work/build.log" 2>&1 || {
        tail -n 40 "$work/build.log" >&2; echo "scripts/dev.sh: dpkg-buildpackage failed ($work/build.log)" >&2
        exit 1; }
    deb=$(ls "$work"/onion-gateway_*_all.deb)
}

deb_job() {
    deb_build
    echo "built $deb"
    env PATH="$DEB_PATH" lintian --fail-on error --tag-display-limit 0 "$work"/onion-gateway_*.changes
    # The package's maintainer scripts start nothing (no unit is enabled or started) and no recommended
    # package (tor!) is pulled in.
    apt-get install -y -o DPkg::Lock::Timeout=600 --no-install-recommends --reinstall "$deb" > "$work/install.log" 2>&1 || {
        cat "$work/install.log" >&2; exit 1; }
    echo "installed $deb"
    # Run the tests from a tree without the source package, so `import onion_gateway` is the installed one.
    # The private-Tor-network tests (marker e2e) run once, in the venv job: they test Tor, not Debian's
    # libraries, and take minutes. So do the catalogues of Postfix configurations (real-world main.cf
    # shapes, client checks in a network namespace): they vary Postfix, through code paths the setup and
    # audit tests here already run with Debian's libraries.
    cp -r "$work/src/tests" "$work/src/examples" "$work/src/scripts" "$work/src/pyproject.toml" "$work/src/README.md" "$work/run/"
    cd "$work/run"
    status=0
    env PATH="$DEB_PATH" ONION_GATEWAY_TEST_INSTALLED=1 /usr/bin/python3 -m pytest -p no:cacheprovider \
        --ignore=tests/unit/test_packaging.py --ignore=tests/integration/test_real_configs.py \
        --ignore=tests/integration/test_onion_client_checks.py \
        -m "not e2e" tests/unit tests/integration tests/package || status=$?
    cd "$ROOT"
    rm -rf "$work"
    return $status
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
        if [ $# -gt 0 ]; then exec "$VENV/bin/python" -m pytest "$@"; fi
        "$VENV/bin/python" -m pytest
        deb_job ;;
    deb)
        need_root deb; install_debian
        deb_job ;;
    package)
        need_root package
        deb_build
        mkdir -p "$ROOT/dist"
        cp "$deb" "$ROOT/dist/"
        rm -rf "$work"
        echo "built dist/$(basename "$deb"): apt-get install --no-install-recommends ./dist/$(basename "$deb")" ;;
    *)
        echo "usage: sh scripts/dev.sh install|run|test [pytest args]|deb|package" >&2; exit 64 ;;
esac
