"""Postfix configuration syntax: one module owns how Postfix splits its list values.

postconf(5): "Specify a list of ... separated by comma and/or whitespace"; since Postfix 3.0 an item may
be a ``{ ... }`` group that keeps commas and whitespace inside it (``inline:{ a = b, c = d }``,
``check_policy_service { inet:127.0.0.1:9, timeout=1s }``). ``$name`` references are left as they are:
expanding them is postconf's job (``postconf -x``), never ours.

Wire examples::

    transport_maps = inline:{ { a.example = smtp:[192.0.2.1] }, b.example = local }, hash:/etc/postfix/transport
      -> ["inline:{ { a.example = smtp:[192.0.2.1] }, b.example = local }", "hash:/etc/postfix/transport"]
    smtpd_relay_restrictions = permit_mynetworks, check_sender_access hash:/x reject_unauth_destination
      -> [("permit_mynetworks", None), ("check_sender_access", "hash:/x"), ("reject_unauth_destination", None)]
"""

from __future__ import annotations

import re

# Restrictions that take the next word (a table) as argument.
TAKES_ARGUMENT = re.compile(r"^check_\w+$|^reject_rbl_client$|^reject_rhsbl_\w+$|^permit_dnswl_client$|"
                            r"^permit_rhswl_client$|^reject_dnsbl_client$|^warn_if_reject$")


def split_list(value: str) -> list[str]:
    """Split a Postfix list value on whitespace and commas, keeping ``{ ... }`` groups whole.

    >>> split_list("permit_mynetworks, check_policy_service { inet:127.0.0.1:9, timeout=1s }")
    ['permit_mynetworks', 'check_policy_service', '{ inet:127.0.0.1:9, timeout=1s }']
    """
    return _split(value, ",")


def split_fields(line: str) -> list[str]:
    """Split a master.cf(5) entry into its fields and arguments: white space only (commas belong to a
    value such as ``-o smtpd_relay_restrictions=a,b``), ``{ ... }`` groups kept whole (master.cf accepts
    ``-o { name = value with spaces }`` since Postfix 3.0).

    >>> split_fields("2525 inet n - n - - smtpd -o { smtpd_tls_ciphers = high } -o a=b,c")
    ['2525', 'inet', 'n', '-', 'n', '-', '-', 'smtpd', '-o', '{ smtpd_tls_ciphers = high }', '-o', 'a=b,c']
    """
    return _split(line, "")


def _split(value: str, separators: str) -> list[str]:
    words: list[str] = []
    current = ""
    depth = 0
    for ch in value:
        if ch == "{":
            depth += 1
        elif ch == "}":
            depth = max(0, depth - 1)
        if depth == 0 and (ch.isspace() or ch in separators):
            if current:
                words.append(current)
            current = ""
            continue
        current += ch
    if current:
        words.append(current)
    return words


def parse_restrictions(value: str) -> list[tuple[str, str | None]]:
    """Restriction list -> ``[(restriction, argument or None)]``.

    >>> parse_restrictions("permit_mynetworks, check_sender_access hash:/x, reject_unauth_destination")
    [('permit_mynetworks', None), ('check_sender_access', 'hash:/x'), ('reject_unauth_destination', None)]
    """
    words = split_list(value)
    out: list[tuple[str, str | None]] = []
    i = 0
    while i < len(words):
        word = words[i]
        name = word.lower()
        if TAKES_ARGUMENT.match(name) and name != "warn_if_reject" and i + 1 < len(words):
            out.append((name, words[i + 1]))
            i += 2
            continue
        out.append((name, None))
        i += 1
    return out
