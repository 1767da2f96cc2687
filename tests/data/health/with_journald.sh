#!/bin/sh
# Run a command beside a real systemd-journald that keeps its journal in /run/log/journal.
# Only inside a private mount namespace (this machine runs no journald; nothing outside changes):
#     unshare -m --propagation private sh tests/data/health/with_journald.sh COMMAND [ARGS...]
# tmpfs goes over /run/systemd (journald's sockets) and /run/log (the journal); journald is stopped
# when COMMAND ends.
set -eu
mount -t tmpfs none /run/systemd
mkdir -p /run/log
mount -t tmpfs none /run/log
mkdir -p /run/systemd/journal
/lib/systemd/systemd-journald >/dev/null 2>&1 &
JOURNALD=$!
trap 'kill $JOURNALD' EXIT
for i in $(seq 100); do [ -S /run/systemd/journal/socket ] && [ -S /run/systemd/journal/dev-log ] && break; sleep 0.05; done
"$@"
