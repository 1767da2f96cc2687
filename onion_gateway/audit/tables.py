"""Postfix list and table matching for the relay audit: does a list or an access table match the Tor client?

Splitting a list value is :mod:`onion_gateway.postfix_syntax`'s job; this module decides what the items
mean. Table lookups go through Postfix's own ``postmap -q`` (:func:`onion_gateway.postfix.postmap_query`),
so every table type Postfix knows (hash, cidr, regexp, pcre, inline, static, ...) answers as smtpd would.

Sources implemented:

* postconf(5) ``mynetworks`` / ``*_authorized_*_hosts``: address match lists -- ``net/mask`` (``[::1]/128``),
  addresses, host names (matched against the client name), ``!`` negation, ``/file`` and ``type:table``.
* access(5) "CLIENT HOSTNAME/ADDRESS PATTERNS": ``check_client_access`` looks up the client name (and its
  parent domains), then the address and its octet prefixes (``127.0.0.1``, ``127.0.0``, ``127.0``, ``127``);
  pattern tables (regexp, pcre, cidr) get whole keys only (smtpd_check.c check_namadr_access).
* access(5) "ACCEPT/REJECT ACTIONS": ``OK``, ``RELAY``, all-numeric -> permit; ``REJECT``, ``DEFER``,
  ``4NN``/``5NN text`` -> reject; ``DUNNO`` and the non-deciding actions (``WARN``, ``PREPEND``, ``HOLD``,
  ...) -> next; anything else is a restriction list or restriction class evaluated in place.

A Postfix smtpd names a loopback client ``localhost`` (the Tor client is ``localhost[127.0.0.1]``).

Wire example (``postmap -q 127.0.0.1 cidr:/etc/postfix/tor_clients``)::

    127.0.0.0/8   REJECT tor clients may not relay     -> stdout "REJECT tor clients may not relay", exit 0
"""

from __future__ import annotations

import enum
import ipaddress
import re
from dataclasses import dataclass
from pathlib import Path

from onion_gateway import postfix
from onion_gateway.errors import TableUnreadable
from onion_gateway.postfix_syntax import split_list

CLIENT_ADDRESS = "127.0.0.1"       # where Tor connects from to a loopback target (and for unix: targets)
CLIENT_NAME = "localhost"          # what Postfix names that client

PATTERN_TABLES = {"regexp", "pcre", "cidr", "static", "inline", "randmap", "socketmap", "tcp"}
NON_DECIDING = {"dunno", "warn", "info", "prepend", "hold", "filter", "bcc", "redirect", "discard",
                "defer_if_reject", "defer_if_permit"}


class Action(enum.Enum):
    """What an access(5) table answer does."""

    PERMIT = "permit"
    REJECT = "reject"
    NEXT = "next"                  # DUNNO, or an action that does not decide (WARN, PREPEND, ...)
    RESTRICTIONS = "restrictions"  # a restriction list or class, evaluated in place


@dataclass(frozen=True)
class Answer:
    """One table answer: the key that matched, the raw answer and what it does.

    :param key: the lookup key that found it (``127.0.0.1``, ``localhost``, ``127.0``).
    :param text: the answer as ``postmap -q`` printed it.
    :param action: see :class:`Action`.
    """

    key: str
    text: str
    action: Action


def client_name(address: str) -> str:
    """The client name smtpd logs and matches for *address*: ``localhost`` for loopback, else the address
    itself (the audit never does reverse DNS)."""
    return CLIENT_NAME if ipaddress.ip_address(address).is_loopback else address


def classify_answer(text: str) -> Action:
    """What an access(5) answer does (see the module docstring).

    >>> classify_answer("REJECT no relay"), classify_answer("permit_auth_destination, permit")
    (<Action.REJECT: 'reject'>, <Action.RESTRICTIONS: 'restrictions'>)
    """
    words = split_list(text)
    if not words:
        return Action.NEXT
    first = words[0].lower()
    if first in ("ok", "relay") or text.strip().isdigit():
        return Action.PERMIT
    if first in ("reject", "defer") or re.match(r"^[45]\d\d$", first):
        return Action.REJECT
    if first in NON_DECIDING:
        return Action.NEXT
    return Action.RESTRICTIONS


def query(table: str, keys: list[str], config_dir: Path | None = None) -> Answer | None:
    """Look *keys* up in *table* in order with ``postmap -q``; the first found answers.

    :param table: ``type:name``.
    :param keys: lookup keys, most specific first.
    :returns: the :class:`Answer`, or ``None`` if no key is found.
    :raises TableUnreadable: if postmap cannot read the table.
    """
    for key in keys:
        code, out, err = postfix.postmap_query(key, table, config_dir)
        if "fatal:" in err or "query error" in err or "lookup error" in err:
            raise TableUnreadable(f"{table}: {err.strip().splitlines()[-1] if err.strip() else 'query error'}")
        if code == 0:
            text = out.strip().splitlines()[0] if out.strip() else ""
            return Answer(key, text, classify_answer(text))
    return None


def client_keys(table: str, address: str) -> list[str]:
    """The keys ``check_client_access`` tries for the client at *address*, in smtpd's order.

    :param table: ``type:name`` (pattern tables get whole keys only).
    :returns: name (and parent domains), then address (and, in non-pattern tables, its prefixes: octets
        for IPv4, ``:`` fields for IPv6).
    """
    pattern = table.partition(":")[0].lower() in PATTERN_TABLES
    name = client_name(address)
    keys: list[str] = []
    if name != address:
        keys.append(name)
        if not pattern:
            parts = name.split(".")
            keys += [".".join(parts[i:]) for i in range(1, len(parts))]
    keys.append(address)
    if not pattern:                        # smtpd_check.c check_addr_access: strip fields from the right
        delimiter = ":" if ":" in address else "."
        rest = address
        while delimiter in rest:
            rest = rest.rpartition(delimiter)[0]
            if rest and not rest.endswith(delimiter):
                keys.append(rest)
    return keys


def client_answer(table: str, address: str, config_dir: Path | None = None) -> Answer | None:
    """What a ``check_client_access`` *table* answers for the client at *address* (see :func:`client_keys`).

    :raises TableUnreadable: if postmap cannot read the table.
    """
    return query(table, client_keys(table, address), config_dir)


def address_in_list(address: str, name: str, value: str, config_dir: Path | None = None) -> bool | None:
    """Does a Postfix address match list (mynetworks, *_authorized_*_hosts) contain *address*?

    Handles CIDR and plain addresses (``[::1]/128`` too), ``!`` negation, ``localhost``-style names
    matched against the client name, and ``type:table`` entries via ``postmap -q`` (an answer other
    than REJECT/DUNNO matches). A ``/file/name`` entry is read as more list items.

    :param name: the parameter's name (for messages).
    :returns: ``True``/``False``, or ``None`` if an entry cannot be evaluated.
    """
    ip = ipaddress.ip_address(address)
    unknown = False
    for raw in split_list(value):
        negate = raw.startswith("!")
        item = raw[1:] if negate else raw
        hit: bool | None
        if item.startswith("/"):
            try:
                hit = address_in_list(address, name, Path(item).read_text().replace("\n", " "), config_dir)
            except OSError:
                hit = None
        elif re.match(r"^[a-z0-9]+:", item) and not _looks_like_ip(item):
            try:
                answer = query(item, [address, client_name(address)], config_dir)
            except TableUnreadable:
                hit = None
            else:
                hit = answer is not None and not answer.text.upper().startswith(("REJECT", "DUNNO"))
        else:
            hit = _ip_matches(ip, item, client_name(address))
        if hit is None:
            unknown = True
            continue
        if hit:
            return not negate
    return None if unknown else False


def _looks_like_ip(item: str) -> bool:
    try:
        ipaddress.ip_network(item.strip("[]").replace("]/", "/"), strict=False)
        return True
    except ValueError:
        return item.startswith("[")


def _ip_matches(ip, item: str, name: str) -> bool | None:
    text = item.replace("[", "").replace("]", "")
    try:
        return ip in ipaddress.ip_network(text, strict=False)
    except ValueError:
        pass
    if re.match(r"^[\w.-]+$", text):                 # a host or domain name: matched against the client name
        return text.lower() == name.lower()
    return None


def loopback_is_interface(inet_interfaces: str, client_address: str = CLIENT_ADDRESS) -> bool:
    """True if ``permit_inet_interfaces`` matches the client: ``all``; for a loopback client also
    ``loopback-only``, ``localhost`` and 127/8 addresses; else the client's own address."""
    loopback = ipaddress.ip_address(client_address).is_loopback
    for item in inet_interfaces.replace(",", " ").split():
        item = item.strip("[]").lower()
        if item == "all" or loopback and item in ("loopback-only", "localhost"):
            return True
        try:
            ip = ipaddress.ip_address(item)
        except ValueError:
            continue
        if (ip.is_loopback if loopback else str(ip) == client_address):
            return True
    return False


def table_entries(table: str, config_dir: Path | None = None) -> list[tuple[str, str]] | None:
    """The ``(key, action)`` pairs of an access table, or ``None`` if it cannot be read.

    Indexed tables are listed with ``postmap -s``; regexp/pcre/cidr/texthash files are read directly
    (pattern, then action); ``static:VALUE`` is one entry matching everything.
    """
    kind, _, name = table.partition(":")
    kind = kind.lower()
    if kind == "static":
        return [("*", name.strip("{} "))]
    if kind in ("regexp", "pcre", "cidr", "texthash"):
        try:
            text = Path(name).read_text()
        except OSError:
            return None
        entries = []
        for line in text.splitlines():
            line = line.strip()
            if not line or line.startswith("#") or line.lower().startswith(("if ", "endif")):
                continue
            if kind in ("regexp", "pcre") and line[0] in "/!":
                match = re.match(r"^(!?/.*?/\w*)\s+(.*)$", line)
                if match:
                    entries.append((match.group(1), match.group(2)))
                continue
            key, action = (line.split(None, 1) + [""])[:2]
            entries.append((key, action.strip()))
        return entries
    return postfix.postmap_dump(table, config_dir)
