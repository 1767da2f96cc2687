"""onion-gateway: deliver mail between independent mail providers over Tor onion services.

Map of the package:

- :mod:`onion_gateway.lookup` -- the Postfix lookup-table daemon (``serve``): wire codecs for
  tcp_table(5) and socketmap_table(5), routing of a recipient to a transport-map answer from
  ``_onion-mx._tcp`` SRV records, and the asyncio listeners.
- :mod:`onion_gateway.onion` -- v3 onion address validation (rend-spec-v3).
- :mod:`onion_gateway.config` -- settings, defaults and the TOML loader.
- :mod:`onion_gateway.errors` -- the exception tree.
- :mod:`onion_gateway.cli` -- the ``onion-gateway`` command line (the only module that prints).
"""

__version__ = "0.1.0"
