"""read_journal against a real systemd-journald and journalctl.

This machine runs no journald, so the test starts one inside a private mount namespace (``unshare -m``,
tmpfs over /run/systemd and /run/log: nothing outside changes), replays the Postfix records recorded
in tests/data/health/journal.jsonl into it through journald's native socket (sd_journal_sendv's
protocol: ``FIELD=value`` lines in one datagram), and runs :func:`read_journal` there against the
default journal location. Records sent this way carry no ``_SYSTEMD_UNIT`` (a trusted field journald
sets only for processes that systemd started), so the test reads without the ``-u`` filter.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import require

pytestmark = pytest.mark.integration

ROOT = Path(__file__).resolve().parents[2]
JOURNAL = ROOT / "tests" / "data" / "health" / "journal.jsonl"
WITH_JOURNALD = ROOT / "tests" / "data" / "health" / "with_journald.sh"

CODE = r"""
import json, os, socket, time
from onion_gateway.errors import HealthSourceError
from onion_gateway.health.maillog import read_journal
sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
sent = 0
for line in open(os.environ["JOURNAL_SAMPLE"]):
    record = json.loads(line)
    fields = {k: record[k] for k in ("MESSAGE", "SYSLOG_IDENTIFIER", "SYSLOG_PID", "PRIORITY", "SYSLOG_FACILITY")
              if k in record}
    sock.sendto("".join(f"{k}={v}\n" for k, v in fields.items()).encode(), "/run/systemd/journal/socket")
    sent += 1
time.sleep(0.5)                       # journald writes asynchronously
view = read_journal(("postfix/smtptor",), 3600, units=())
filtered = read_journal(("postfix/smtptor",), 3600)          # the default -u postfix units: none match here
try:
    read_journal(("postfix/smtptor",), 3600, journal_directory="/nonexistent")
    error = ""
except HealthSourceError as exc:
    error = str(exc)
print(json.dumps({"sent": sent, "view": [view.sent, view.deferred, view.bounced, view.source,
                  view.last_sent.recipient if view.last_sent else None, view.failing_since is not None],
                  "filtered": [filtered.sent, filtered.deferred], "error": error}))
"""


def test_read_journal_through_real_journald_and_journalctl():
    require("unshare", "journalctl")
    if not Path("/lib/systemd/systemd-journald").exists():
        pytest.fail("systemd-journald is missing (Debian package systemd)")
    done = subprocess.run(["unshare", "-m", "--propagation", "private", "sh", str(WITH_JOURNALD),
                           sys.executable, "-c", CODE],
                          env={"JOURNAL_SAMPLE": str(JOURNAL), "PATH": "/usr/sbin:/usr/bin:/sbin:/bin",
                               "PYTHONPATH": str(ROOT)},
                          capture_output=True, text=True, timeout=60, cwd=ROOT)
    assert done.returncode == 0, done.stderr
    result = json.loads(done.stdout.strip().splitlines()[-1])
    expected = {"sent": 0, "deferred": 0, "bounced": 0}
    for line in JOURNAL.read_text().splitlines():
        record = json.loads(line)
        if record["SYSLOG_IDENTIFIER"] == "postfix/smtptor/smtp":
            for status in expected:
                expected[status] += f"status={status} " in record["MESSAGE"] + " "
    assert result["sent"] == len(JOURNAL.read_text().splitlines())
    sent, deferred, bounced, source, last_recipient, failing = result["view"]
    assert (sent, deferred, bounced) == (expected["sent"], expected["deferred"], expected["bounced"])
    assert (sent, bounced) == (2, 2) and deferred > 0
    assert source == "journal" and last_recipient.endswith("@sent.partner.test") and failing
    assert result["filtered"] == [0, 0]
    assert result["error"].startswith("journalctl failed")
