"""Onion service addresses (rend-spec-v3 §6 "Encoding onion addresses").

A v3 address is ``base32(PUBKEY | CHECKSUM | VERSION) + ".onion"`` where PUBKEY is the 32-byte
ed25519 identity key, VERSION is ``b"\\x03"`` and CHECKSUM is the first two bytes of
``SHA3-256(".onion checksum" | PUBKEY | VERSION)``: 56 base32 characters before ``.onion``.
A v2 address (16 characters) is obsolete since Tor 0.4.6 and is refused here.
"""

from __future__ import annotations

import base64
import binascii
import enum
import hashlib

V3_LABEL_LENGTH = 56
V2_LABEL_LENGTH = 16
_CHECKSUM_PREFIX = b".onion checksum"
_VERSION = b"\x03"


class OnionCheck(enum.Enum):
    """Why a name is or is not a usable v3 onion address (the value is the metric/log label)."""

    VALID = "valid"
    NOT_ONION = "clearnet"          # does not end in .onion
    V2 = "v2_onion"                 # 16-character label: obsolete, unreachable
    BAD_LENGTH = "bad_length"
    BAD_BASE32 = "bad_base32"
    BAD_VERSION = "bad_version"
    BAD_CHECKSUM = "bad_checksum"


def check_onion(name: str) -> OnionCheck:
    """Classify *name* as a v3 onion address or say what is wrong with it.

    :param name: a host name such as ``"abc...xyz.onion"`` or ``"abc...xyz.onion."``; case is ignored.
        A subdomain (``www.<56 chars>.onion``) is judged by its last label before ``.onion``.
    :returns: :class:`OnionCheck`, ``VALID`` only for a well-formed v3 address with a correct checksum.
    :raises: nothing; every input gets a verdict.
    """
    host = name.lower().rstrip(".")
    if not host.endswith(".onion"):
        return OnionCheck.NOT_ONION
    label = host[: -len(".onion")].rsplit(".", 1)[-1]
    if len(label) == V2_LABEL_LENGTH:
        return OnionCheck.V2
    if len(label) != V3_LABEL_LENGTH:
        return OnionCheck.BAD_LENGTH
    try:
        raw = base64.b32decode(label.upper())
    except (binascii.Error, ValueError):
        return OnionCheck.BAD_BASE32
    pubkey, checksum, version = raw[:32], raw[32:34], raw[34:]
    if version != _VERSION:
        return OnionCheck.BAD_VERSION
    if hashlib.sha3_256(_CHECKSUM_PREFIX + pubkey + version).digest()[:2] != checksum:
        return OnionCheck.BAD_CHECKSUM
    return OnionCheck.VALID


def normalize_onion(name: str) -> str:
    """Return the canonical form of a valid v3 address: lower case, no trailing dot, no subdomain.

    :param name: a name for which :func:`check_onion` returned ``VALID``.
    :returns: ``"<56 base32 chars>.onion"``.
    :raises ValueError: if *name* is not a valid v3 onion address.
    """
    verdict = check_onion(name)
    if verdict is not OnionCheck.VALID:
        raise ValueError(f"not a valid v3 onion address ({verdict.value}): {name!r}")
    label = name.lower().rstrip(".")[: -len(".onion")].rsplit(".", 1)[-1]
    return label + ".onion"


def onion_from_public_key(public_key: bytes) -> str:
    """Build the v3 address of an ed25519 public key (rend-spec-v3 §6).

    :param public_key: the 32-byte ed25519 identity key.
    :returns: ``"<56 base32 chars>.onion"`` in lower case.
    :raises ValueError: if *public_key* is not 32 bytes.
    """
    if len(public_key) != 32:
        raise ValueError(f"an ed25519 public key has 32 bytes, got {len(public_key)}")
    checksum = hashlib.sha3_256(_CHECKSUM_PREFIX + public_key + _VERSION).digest()[:2]
    return base64.b32encode(public_key + checksum + _VERSION).decode("ascii").lower() + ".onion"
