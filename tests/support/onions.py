"""Valid and invalid onion names for tests, computed from keys (rend-spec-v3), not copied strings."""

from __future__ import annotations

import hashlib

from onion_gateway.onion import onion_from_public_key


def onion_for(seed: str) -> str:
    """A valid v3 address for a deterministic 32-byte "public key" derived from *seed*."""
    return onion_from_public_key(hashlib.sha256(seed.encode()).digest())


def bad_checksum(onion: str) -> str:
    """*onion* with its checksum characters changed (length and alphabet stay valid)."""
    label = onion[:-len(".onion")]
    # the checksum lives in base32 characters 52-54; flip character 53 to another base32 letter
    flipped = "a" if label[53] != "a" else "b"
    return label[:53] + flipped + label[54:] + ".onion"


ONION_A = onion_for("a")
ONION_B = onion_for("b")
ONION_C = onion_for("c")
V2_ONION = "expyuzz4wqqyqhjn.onion"
