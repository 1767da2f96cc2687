"""dnsmasq as an *authoritative* server, so answers carry real TTLs and negative answers an SOA.

dnsmasq's ``local=/zone/`` answers (the session fixture) have TTL 0 and no SOA in NXDOMAIN/NODATA
replies. With ``auth-zone`` every SRV answer has TTL ``auth-ttl`` and every negative answer carries
``example.test. SOA ... <minimum = auth-ttl>``, which is what the cache's TTL and RFC 2308 negative-TTL
handling needs. dnsmasq logs these queries as ``auth[SRV] NAME from``, which
:meth:`Dnsmasq.query_count` (it counts ``query[``) does not see; :func:`srv_queries` counts both.
"""

from __future__ import annotations

from pathlib import Path

from tests.support.dnsserver import Dnsmasq, SrvEntry


def auth_dnsmasq(workdir: Path, srv: list[SrvEntry], ttl_seconds: int, zone: str = "example.test") -> Dnsmasq:
    """An unstarted :class:`Dnsmasq` answering *zone* authoritatively with TTL and SOA minimum *ttl_seconds*."""
    return Dnsmasq(workdir, local_zones=[], srv=srv, extra_lines=[
        f"auth-server=ns.{zone},127.0.0.1",
        f"auth-zone={zone}",
        f"auth-ttl={ttl_seconds}",
        f"auth-soa=1,hostmaster.{zone},1200,120,1209600",
    ])


def srv_queries(server: Dnsmasq, domain: str, service: str = "onion-mx") -> int:
    """How many SRV queries for ``_<service>._tcp.<domain>`` *server* has logged (auth or forwarded)."""
    name = f"_{service}._tcp.{domain}"
    try:
        text = server.log_path.read_text()
    except OSError:
        return 0
    return sum(1 for line in text.splitlines()
               if ("query[SRV]" in line or "auth[SRV]" in line) and f" {name} from" in line)
