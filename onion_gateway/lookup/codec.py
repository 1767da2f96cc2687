"""Sans-IO wire codecs for Postfix's tcp_table(5) and socketmap_table(5) lookup protocols.

Neither class touches a socket: feed it bytes as they arrive (any split), then take complete requests
with :meth:`next_request` until it returns ``None``. A request that is malformed but keeps the stream in
step comes back as a :class:`Malformed` item (answer it with an error reply, in order, and go on);
a stream that cannot be split any more raises :class:`~onion_gateway.errors.FramingError` (answer with
:meth:`encode_framing_error`, then close the connection).

tcp_table(5), one line per request and reply, ``%XX`` encoding for ``%``, whitespace and
non-printable bytes; replies at most 4096 bytes including the newline::

    get alice%2Bx@Example.COM\\n      ->  200 smtptor:[x.onion]:25\\n
                                          500 not%20found\\n            (no such key)
                                          400 DNS%20timeout\\n          (temporary error: Postfix defers)

socketmap_table(5), netstrings ``LEN:DATA,`` where DATA is ``NAME SPACE KEY``; requests at most 10,000
bytes, replies at most 100,000::

    23:onion alice@example.com,      ->  23:OK smtptor:[x.onion]:25,  /  9:NOTFOUND ,
                                          16:TEMP DNS timeout,        /  15:PERM bad request,
"""

from __future__ import annotations

from dataclasses import dataclass

from onion_gateway.errors import FramingError
from onion_gateway.lookup.result import LookupResult, Outcome

TCP_TABLE_MAX_REPLY_BYTES = 4096          # tcp_table(5): "no longer than 4096 characters including the newline"
SOCKETMAP_MAX_REQUEST_BYTES = 10_000      # socketmap_table(5): request netstring payload limit
SOCKETMAP_MAX_REPLY_BYTES = 100_000       # socketmap_table(5): reply netstring payload limit
DEFAULT_TCP_MAX_REQUEST_BYTES = 4096


@dataclass(frozen=True, slots=True)
class Request:
    """A well-formed lookup request.

    :param key: the decoded lookup key (str; may be empty, ``*``, an address or a domain).
    :param map_name: the socketmap NAME field, or ``None`` for tcp_table.
    """

    key: str
    map_name: str | None = None


@dataclass(frozen=True, slots=True)
class Malformed:
    """A request that could not be parsed while the stream stays in step; *reason* is for the reply."""

    reason: str


# Bytes tcp_table(5) wants percent-encoded: '%', whitespace and every non-printable or non-ASCII byte.
_TCP_SAFE = frozenset(range(0x21, 0x7F)) - {ord("%")}
_TCP_SAFE_BYTES = bytes(sorted(_TCP_SAFE))    # for bytes.translate: deleting these leaves the unsafe ones
_REASON_MAX_CHARS = 200


def percent_encode(text: str) -> bytes:
    """Encode *text* for a tcp_table(5) request or reply field.

    :param text: any string; it is encoded as UTF-8 first.
    :returns: ASCII bytes in which ``%``, whitespace, control and non-ASCII bytes are ``%XX``.
    """
    raw = text.encode("utf-8")
    if not raw.translate(None, _TCP_SAFE_BYTES):     # C-speed "every byte is safe" (the common case)
        return raw
    out = bytearray()
    for b in raw:
        if b in _TCP_SAFE:
            out.append(b)
        else:
            out += b"%%%02X" % b
    return bytes(out)


def percent_decode(field: bytes) -> str:
    """Decode a tcp_table(5) ``%XX``-encoded field into text.

    :param field: the raw bytes between ``get `` and the newline.
    :returns: the decoded key as str.
    :raises ValueError: on a truncated or non-hex ``%`` escape, or bytes that are not UTF-8.
    """
    if b"%" not in field:
        return field.decode("utf-8")
    out = bytearray()
    i, n = 0, len(field)
    while i < n:
        b = field[i]
        if b == 0x25:  # '%'
            hexpair = field[i + 1 : i + 3]
            if len(hexpair) != 2:
                raise ValueError("truncated %XX escape")
            try:
                out.append(int(hexpair, 16))
            except ValueError:
                raise ValueError(f"bad %XX escape {hexpair!r}") from None
            i += 3
        else:
            out.append(b)
            i += 1
    return out.decode("utf-8")


class TcpTableDecoder:
    """Split a tcp_table(5) byte stream into :class:`Request` / :class:`Malformed` items.

    :param max_request_bytes: the longest request line accepted, newline included (bytes). A longer
        line loses framing: :meth:`next_request` raises :class:`FramingError`.
    """

    __slots__ = ("_buffer", "_max")

    def __init__(self, max_request_bytes: int = DEFAULT_TCP_MAX_REQUEST_BYTES) -> None:
        self._buffer = bytearray()
        self._max = max_request_bytes

    def feed(self, data: bytes) -> None:
        """Append bytes received from the peer (any size, any split)."""
        self._buffer += data

    @property
    def buffered_bytes(self) -> int:
        """Bytes received but not yet returned as a request."""
        return len(self._buffer)

    def next_request(self) -> Request | Malformed | None:
        """Return the next complete request, or ``None`` if more bytes are needed.

        :raises FramingError: if a line exceeds ``max_request_bytes`` (the stream is out of step).
        """
        buf = self._buffer
        end = buf.find(b"\n", 0, self._max)
        if end < 0:
            if len(buf) >= self._max:
                raise FramingError(f"request line longer than {self._max} bytes")
            return None
        line = bytes(buf[:end])
        del buf[: end + 1]
        if line.endswith(b"\r"):
            line = line[:-1]
        command, sep, rest = line.partition(b" ")
        if command == b"get" and sep:
            try:
                return Request(percent_decode(rest))
            except (ValueError, UnicodeDecodeError) as exc:
                return Malformed(f"bad key encoding: {exc}")
        if command == b"put":
            return Malformed("put is not implemented")
        return Malformed("unknown command: expected 'get KEY'")


def encode_tcp_reply(result: LookupResult) -> bytes:
    """Encode *result* as one tcp_table(5) reply line.

    :returns: ``b"200 VALUE\\n"`` (found), ``b"500 TEXT\\n"`` (not found) or ``b"400 TEXT\\n"``
        (temporary failure and malformed requests: Postfix defers rather than taking another route).
        A found value that would exceed 4096 bytes becomes a ``400`` reply instead of a cut route.
    """
    outcome = result.outcome
    if outcome is Outcome.FOUND:
        line = b"200 " + percent_encode(result.value) + b"\n"
        if len(line) <= TCP_TABLE_MAX_REPLY_BYTES:
            return line
        return b"400 reply%20too%20long\n"
    if outcome is Outcome.NOT_FOUND:
        return b"500 " + percent_encode((result.value or "not found")[:_REASON_MAX_CHARS]) + b"\n"
    return b"400 " + percent_encode((result.value or "temporary failure")[:_REASON_MAX_CHARS]) + b"\n"


def encode_tcp_framing_error(reason: str) -> bytes:
    """The tcp_table(5) reply sent before closing a connection whose framing was lost."""
    return b"400 " + percent_encode(reason[:_REASON_MAX_CHARS]) + b"\n"


class SocketmapDecoder:
    """Split a socketmap_table(5) netstring stream into :class:`Request` / :class:`Malformed` items.

    :param max_request_bytes: the largest netstring payload accepted (bytes, default 10,000 as in
        socketmap_table(5)). A longer announced length, a non-digit length or a missing ``,``
        raises :class:`FramingError`.
    """

    __slots__ = ("_buffer", "_max", "_max_digits")

    def __init__(self, max_request_bytes: int = SOCKETMAP_MAX_REQUEST_BYTES) -> None:
        self._buffer = bytearray()
        self._max = max_request_bytes
        self._max_digits = len(str(max_request_bytes))

    def feed(self, data: bytes) -> None:
        """Append bytes received from the peer (any size, any split)."""
        self._buffer += data

    @property
    def buffered_bytes(self) -> int:
        """Bytes received but not yet returned as a request."""
        return len(self._buffer)

    def next_request(self) -> Request | Malformed | None:
        """Return the next complete request, or ``None`` if more bytes are needed.

        :raises FramingError: on a bad or oversized length prefix or a netstring not ending in ``,``.
        """
        buf = self._buffer
        colon = buf.find(b":", 0, self._max_digits + 1)
        if colon < 0:
            if len(buf) > self._max_digits or (buf and not buf.isdigit()):
                raise FramingError("bad netstring length")
            return None
        digits = bytes(buf[:colon])
        if not digits.isdigit():
            raise FramingError("bad netstring length")
        length = int(digits)
        if length > self._max:
            raise FramingError(f"request longer than {self._max} bytes")
        end = colon + 1 + length
        if len(buf) <= end:
            return None
        if buf[end] != 0x2C:  # ','
            raise FramingError("netstring not terminated by ','")
        payload = bytes(buf[colon + 1 : end])
        del buf[: end + 1]
        name, sep, key = payload.partition(b" ")
        if not sep or not name:
            return Malformed("expected 'NAME KEY'")
        try:
            return Request(key.decode("utf-8"), name.decode("utf-8"))
        except UnicodeDecodeError:
            return Malformed("key is not UTF-8")


def _netstring(payload: bytes) -> bytes:
    return b"%d:%s," % (len(payload), payload)


def encode_socketmap_reply(result: LookupResult) -> bytes:
    """Encode *result* as a socketmap_table(5) reply netstring.

    :returns: ``OK VALUE`` (found), ``NOTFOUND `` (not found), ``TEMP REASON`` (temporary failure: Postfix
        defers) or ``PERM REASON`` (malformed request), each as a netstring of at most 100,000 bytes.
    """
    outcome = result.outcome
    if outcome is Outcome.FOUND:
        payload = b"OK " + result.value.encode("utf-8")
        if len(payload) > SOCKETMAP_MAX_REPLY_BYTES:
            payload = b"TEMP reply too long"
    elif outcome is Outcome.NOT_FOUND:
        payload = b"NOTFOUND "
    elif outcome is Outcome.TEMP_FAIL:
        payload = b"TEMP " + result.value[:_REASON_MAX_CHARS].encode("utf-8")
    else:
        payload = b"PERM " + result.value[:_REASON_MAX_CHARS].encode("utf-8")
    return _netstring(payload)


def encode_socketmap_framing_error(reason: str) -> bytes:
    """The socketmap_table(5) reply sent before closing a connection whose framing was lost."""
    return _netstring(b"PERM " + reason[:_REASON_MAX_CHARS].encode("utf-8"))
