"""Log lines for journald: syslog priority prefixes when stderr is the journal, plain lines otherwise.

systemd.exec(5) sets ``JOURNAL_STREAM=DEVICE:INODE`` for a service whose stderr is the journal; the test
gives a child process a file as stderr and that file's device and inode, which is what journald's stream
looks like to the process (the file stands in for the journal socket: same check, same bytes).
"""

from __future__ import annotations

import os
import subprocess
import sys

SCRIPT = ("import logging; from onion_gateway.cli.common import configure_logging; configure_logging('info'); "
          "log = logging.getLogger('onion_gateway.x'); log.warning('dns slow'); log.info('ready'); "
          "log.error('two\\nlines')")


def run_with_stderr(path, journal_stream: str | None) -> str:
    env = {k: v for k, v in os.environ.items() if k != "JOURNAL_STREAM"}
    with open(path, "w") as stderr:
        if journal_stream == "self":
            st = os.fstat(stderr.fileno())
            journal_stream = f"{st.st_dev}:{st.st_ino}"
        if journal_stream is not None:
            env["JOURNAL_STREAM"] = journal_stream
        subprocess.run([sys.executable, "-c", SCRIPT], stderr=stderr, env=env, check=True, timeout=60)
    return open(path).read()


def test_stderr_on_the_journal_gets_priority_prefixes_and_no_timestamp(tmp_path):
    lines = run_with_stderr(tmp_path / "stderr", "self").splitlines()
    assert lines == ["<4>onion_gateway.x: dns slow", "<6>onion_gateway.x: ready",
                     "<3>onion_gateway.x: two", "<3>lines"]


def test_inherited_journal_stream_of_another_file_is_ignored(tmp_path):
    other = tmp_path / "other"
    other.write_text("")
    st = os.stat(other)
    text = run_with_stderr(tmp_path / "stderr", f"{st.st_dev}:{st.st_ino}")
    assert "<4>" not in text
    assert "WARNING onion_gateway.x: dns slow" in text
    assert text.split()[0][:2] == "20"          # the asctime of the plain format: 2026-...


def test_no_journal_stream_keeps_the_plain_format(tmp_path):
    text = run_with_stderr(tmp_path / "stderr", None)
    assert "<" not in text.split("\n")[0] and "WARNING onion_gateway.x: dns slow" in text
