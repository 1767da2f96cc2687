"""A throwaway TLS certificate authority for tests (``openssl`` CLI): a CA, a server certificate for a
private Postfix and a client certificate the relay audit presents. Keys are P-256, valid for two days,
written into a directory the caller owns (and removes)."""

from __future__ import annotations

import subprocess
from dataclasses import dataclass
from pathlib import Path

_CURVE = ["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256", "-nodes"]


@dataclass(frozen=True)
class TestCA:
    """Paths of the CA certificate and of a server and a client certificate it signed (PEM).

    :param directory: where the files live.
    """

    directory: Path

    @property
    def ca_cert(self) -> Path:
        """The CA certificate (``smtpd_tls_CAfile``)."""
        return self.directory / "ca.pem"

    def cert(self, name: str) -> Path:
        """The certificate of ``"server"`` or ``"client"`` (PEM)."""
        return self.directory / f"{name}.pem"

    def key(self, name: str) -> Path:
        """The private key of ``"server"``, ``"client"`` or ``"ca"`` (PEM, unencrypted)."""
        return self.directory / f"{name}.key"

    def fingerprint(self, name: str) -> str:
        """The certificate's SHA-256 fingerprint as Postfix writes it (``AB:CD:...``)."""
        out = _openssl("x509", "-in", str(self.cert(name)), "-noout", "-fingerprint", "-sha256")
        return out.strip().split("=", 1)[1]


def _openssl(*args: str) -> str:
    return subprocess.run(["openssl", *args], capture_output=True, text=True, check=True, timeout=60).stdout


def make_test_ca(directory: Path, server_name: str = "mx.lab.test", client_name: str = "audit-client") -> TestCA:
    """Create ``ca.pem``/``ca.key``, ``server.pem``/``server.key`` and ``client.pem``/``client.key``.

    :param directory: an existing directory (readable by the Postfix that loads the server files).
    :returns: the :class:`TestCA`.
    :raises subprocess.CalledProcessError: if openssl fails.
    """
    ca = TestCA(Path(directory))
    _openssl("req", "-x509", *_CURVE, "-keyout", str(ca.key("ca")), "-out", str(ca.ca_cert), "-days", "2",
             "-subj", "/CN=onion-gateway throwaway test CA")
    for name, cn in (("server", server_name), ("client", client_name)):
        csr = ca.directory / f"{name}.csr"
        _openssl("req", *_CURVE, "-keyout", str(ca.key(name)), "-out", str(csr), "-subj", f"/CN={cn}")
        _openssl("x509", "-req", "-in", str(csr), "-CA", str(ca.ca_cert), "-CAkey", str(ca.key("ca")),
                 "-CAcreateserial", "-out", str(ca.cert(name)), "-days", "2")
    for path in ca.directory.iterdir():
        path.chmod(0o644)
    return ca
