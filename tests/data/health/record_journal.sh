#!/bin/sh
# Record tests/data/health/journal.jsonl: Postfix logging through syslog(3) into a real
# systemd-journald, read back with journalctl -o json. The machine runs no journald, so this
# runs inside a private mount namespace: tmpfs over /dev with the few device nodes bind-mounted
# back and /dev/log pointing at journald's socket, and with_journald.sh for journald itself;
# nothing outside the namespace changes. Run as root from the repository root:
#     unshare -m --propagation private sh tests/data/health/record_journal.sh
set -eu
OLD=$(mktemp -d /tmp/og-health-dev.XXXXXX)
mount --bind /dev "$OLD"
mount -t tmpfs -o mode=755 none /dev
for n in null zero random urandom full tty; do touch "/dev/$n"; mount --bind "$OLD/$n" "/dev/$n"; done
mkdir /dev/pts /dev/shm
mount --bind "$OLD/pts" /dev/pts
mount -t tmpfs none /dev/shm
ln -s /proc/self/fd /dev/fd
ln -s /run/systemd/journal/dev-log /dev/log
sh tests/data/health/with_journald.sh .venv/bin/python tests/data/health/record_samples.py --journal
