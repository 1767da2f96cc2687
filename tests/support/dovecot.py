"""A private Dovecot serving only SASL authentication to one Postfix instance (no IMAP/POP3, no port).

Dovecot's auth service listens on ``<queue_directory>/private/auth``, the socket Postfix's
``smtpd_sasl_path = private/auth`` names relative to its (chroot) queue directory, as in the Dovecot
wiki's "Postfix and Dovecot SASL". Users come from a passwd-file with plain-text passwords.
The configuration and run directory live in a temp dir; nothing in /etc/dovecot is read.
"""

from __future__ import annotations

import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path

from tests.support.procs import public_tempdir, tail, wait_for

CONFIG = """\
# private auth-only Dovecot for one test (Dovecot 2.3 syntax)
protocols =
base_dir = {root}/run
state_dir = {root}/state
log_path = {root}/dovecot.log
ssl = no
disable_plaintext_auth = no
auth_mechanisms = plain login
passdb {{
  driver = passwd-file
  args = scheme=PLAIN username_format=%u {root}/users
}}
userdb {{
  driver = static
  args = uid=65534 gid=65534 home=/nonexistent
}}
service auth {{
  unix_listener {socket} {{
    mode = 0660
    user = postfix
    group = postfix
  }}
}}
"""


@dataclass
class DovecotAuth:
    """``dovecot -F`` with the config above; :attr:`socket` is the auth socket Postfix connects to.

    :param socket: where the auth listener goes (``<queue_directory>/private/auth``).
    :param users: ``{user: password}`` for the passwd-file.
    """

    socket: Path
    users: dict[str, str]
    root: Path | None = None
    proc: subprocess.Popen | None = None

    def start(self) -> "DovecotAuth":
        """Write the config and start Dovecot in the foreground; wait until the socket exists.

        :raises AssertionError: if dovecot is not installed or the socket does not appear in 15 s.
        """
        assert shutil.which("dovecot"), "dovecot is not installed (scripts/dev.sh installs dovecot-core)"
        self.root = public_tempdir("og-dovecot-")
        for sub in ("run", "state"):
            (self.root / sub).mkdir()
        (self.root / "users").write_text("".join(f"{u}:{{PLAIN}}{p}::::::\n" for u, p in self.users.items()))
        self.socket.parent.mkdir(parents=True, exist_ok=True)
        conf = self.root / "dovecot.conf"
        conf.write_text(CONFIG.format(root=self.root, socket=self.socket))
        self.proc = subprocess.Popen(["dovecot", "-F", "-c", str(conf)], stdout=subprocess.DEVNULL,
                                     stderr=open(self.root / "stderr", "wb"))
        wait_for(self.socket.exists, 15, f"dovecot auth socket {self.socket}",
                 lambda: tail(self.root / "dovecot.log") + tail(self.root / "stderr"))
        return self

    def stop(self) -> None:
        """Stop Dovecot and remove its directory."""
        if self.proc is not None:
            self.proc.terminate()
            self.proc.wait(15)
        if self.root is not None:
            shutil.rmtree(self.root, ignore_errors=True)
