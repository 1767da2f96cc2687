"""The delivery view across a real ``postfix logrotate`` on a private Postfix instance.

``postfix logrotate`` (postfix-script) renames ``maillog_file`` to ``maillog_file.`date
+$maillog_file_rotate_suffix``` , makes postlogd reopen it and compresses the old one with
``maillog_file_compressor`` (defaults ``%Y%m%d-%H%M%S`` and gzip, postconf(5)). A delivery over
``smtptor`` to an smtp-sink before the rotation is then only in the gzipped file, a deferral after it
only in the new one; the view of the last hour must still show the delivery.
"""

from __future__ import annotations

import gzip
import shutil
import time

import pytest

from onion_gateway.health.maillog import DEFAULT_ROTATE_SUFFIX, log_source, parse_syslog_line, read_deliveries
from tests.conftest import require
from tests.support.postfix import new_instance, route_over_smtptor, smtp_sink
from tests.support.procs import free_port, wait_for

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def rotated():
    """A Postfix whose one successful onion delivery happened before ``postfix logrotate``."""
    require("postfix", "postconf", "smtp-sink", "gzip")
    sink_port, dead_port = free_port(), free_port()
    pf = new_instance("og-health-rot-", hostname="gw.lab.test", domains=["lab.test"])
    route_over_smtptor(pf, {"sent.example.test": sink_port, "dead.example.test": dead_port})
    pf.write()
    try:
        with smtp_sink(sink_port):
            pf.start()
            with pf.smtp() as client:
                client.sendmail("alice@lab.test", ["bob@sent.example.test"], "Subject: out\r\n\r\nout\r\n")
            wait_for(lambda: "postfix/smtptor/smtp" in pf.log_text() and "status=sent" in pf.log_text(), 60,
                     "the delivery to the sink", pf.log_text)
            pf.postfix("logrotate")
            with pf.smtp() as client:
                client.sendmail("alice@lab.test", ["carol@dead.example.test"], "Subject: stuck\r\n\r\nstuck\r\n")
            wait_for(lambda: "status=deferred" in pf.log_text(), 60, "the deferral after the rotation", pf.log_text)
            yield pf
    finally:
        pf.stop()
        shutil.rmtree(pf.root, ignore_errors=True)


def test_postfix_names_rotated_logs_as_the_reader_expects(rotated):
    assert rotated.postconf("-h", "maillog_file_rotate_suffix").strip() == DEFAULT_ROTATE_SUFFIX
    files = sorted(p.name for p in rotated.root.glob("maillog.*"))
    assert len(files) == 1 and files[0].endswith(".gz"), files
    assert "status=sent" not in rotated.log_text()                  # the delivery is only in the rotated file
    with gzip.open(rotated.root / files[0], "rt") as fh:
        assert "bob@sent.example.test" in fh.read()


def test_last_delivery_is_read_from_the_rotated_file(rotated):
    source = log_source(rotated.config_dir)
    assert source.path == rotated.maillog and source.rotate_suffix == DEFAULT_ROTATE_SUFFIX
    view = read_deliveries(source, 3600)
    (rotated_file,) = rotated.root.glob("maillog.*.gz")
    assert view.files == (str(rotated.maillog), str(rotated_file))
    assert view.last_sent is not None and view.last_sent.recipient == "bob@sent.example.test"
    assert view.last_failed is not None and view.last_failed.recipient == "carol@dead.example.test"
    assert (view.sent, view.problems) == (1, ())
    assert view.failing_since == view.last_failed.timestamp        # failing since after the delivery


def test_a_window_after_the_rotation_leaves_the_rotated_file_alone(rotated):
    now = time.time()
    first = parse_syslog_line(rotated.maillog.read_text().splitlines()[0], now)[0]
    view = read_deliveries(log_source(rotated.config_dir), now - first - 0.5, now)   # starts after that line
    assert view.files == (str(rotated.maillog),) and view.last_sent is None
