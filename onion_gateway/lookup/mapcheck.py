"""``check-map``: compare a static map (onionmx ``tor_transport`` form) with the live SRV records.

A static entry is a pin the operator wrote by hand; it goes stale when the provider moves its onion
service, and it is unnecessary once the provider publishes SRV. For each entry::

    invalid_onion   the entry names a v2, bad-checksum or malformed onion      (a difference)
    srv_disagrees   the domain's SRV names other onion services                  (a difference)
    srv_published   the SRV names the same onions: the static entry can go       (a difference)
    dns_failed      DNS could not be asked (SERVFAIL, timeout)                   (not checked)
    no_srv          no SRV record: the static entry is what routes the domain   (clean)
    parent_entry    a ".parent" entry: matches subdomains, no SRV to compare    (clean)
"""

from __future__ import annotations

import enum
from collections.abc import Mapping
from dataclasses import dataclass

from onion_gateway.lookup.dns import DnsStatus
from onion_gateway.lookup.routing import Router, normalize_domain, onions_in_route, usable_targets
from onion_gateway.onion import OnionCheck, check_onion, normalize_onion


class MapEntryStatus(enum.Enum):
    """What check-map concluded about one static entry (the value is printed)."""

    INVALID_ONION = "invalid_onion"
    SRV_DISAGREES = "srv_disagrees"
    SRV_PUBLISHED = "srv_published"
    DNS_FAILED = "dns_failed"
    NO_SRV = "no_srv"
    PARENT_ENTRY = "parent_entry"

    @property
    def is_difference(self) -> bool:
        """True for the kinds that make ``check-map`` exit 1."""
        return self in (MapEntryStatus.INVALID_ONION, MapEntryStatus.SRV_DISAGREES, MapEntryStatus.SRV_PUBLISHED)


@dataclass(frozen=True)
class MapEntryCheck:
    """One static entry's verdict.

    :param key: the map key as written.
    :param value: the map value as written.
    :param status: the :class:`MapEntryStatus`.
    :param detail: one line for humans (which onion is bad, what SRV says).
    """

    key: str
    value: str
    status: MapEntryStatus
    detail: str = ""


async def check_static_map(entries: Mapping[str, str], router: Router) -> list[MapEntryCheck]:
    """Check every static-map entry against DNS.

    :param entries: ``{key: value}`` as read by :func:`onion_gateway.config.read_static_map`.
    :param router: supplies the resolver and the SRV naming (service label).
    :returns: one :class:`MapEntryCheck` per entry, in key order.
    :raises: nothing for DNS trouble (``dns_failed``).
    """
    results = []
    for key in sorted(entries):
        value = entries[key]
        onions = onions_in_route(value)
        bad = [f"{o} ({check_onion(o).value})" for o in onions if check_onion(o) is not OnionCheck.VALID]
        if bad:
            results.append(MapEntryCheck(key, value, MapEntryStatus.INVALID_ONION, "bad onion: " + ", ".join(bad)))
            continue
        if key.startswith("."):
            results.append(MapEntryCheck(key, value, MapEntryStatus.PARENT_ENTRY, "matches subdomains"))
            continue
        domain = normalize_domain(key)
        if domain is None:
            results.append(MapEntryCheck(key, value, MapEntryStatus.INVALID_ONION, "key is not a domain name"))
            continue
        answer = await router.resolver.query(router.srv_name(domain))
        if answer.status.is_temporary:
            results.append(MapEntryCheck(key, value, MapEntryStatus.DNS_FAILED, answer.detail))
            continue
        srv = sorted({r.target for r in usable_targets(domain, answer.records)}) \
            if answer.status is DnsStatus.ANSWER else []
        if not srv:
            results.append(MapEntryCheck(key, value, MapEntryStatus.NO_SRV, answer.detail or "no usable SRV target"))
        elif srv == sorted({normalize_onion(o) for o in onions}):
            results.append(MapEntryCheck(key, value, MapEntryStatus.SRV_PUBLISHED,
                                         "SRV publishes the same onion(s): the static entry is not needed"))
        else:
            results.append(MapEntryCheck(key, value, MapEntryStatus.SRV_DISAGREES, "SRV says " + ", ".join(srv)))
    return results
