"""Onion delivery health: notice when mail over Tor silently stops (issue 16).

Readers and verdicts only; ``status``, the CLI and ``/metrics`` call them. Everything here reads and
changes nothing in Postfix or Tor.

- :mod:`.queue`: queue view from ``postqueue -j`` -- deferred onion messages and recipients, the oldest
  one's age, the most common deferral reason, per partner domain on request. Which recipients are
  onion mail is decided by an injected ``domain -> bool | None`` predicate;
- :mod:`.routes`: the production predicate, the gateway's own :class:`~onion_gateway.lookup.routing.Router`
  with pinning off;
- :mod:`.maillog`: delivery view from Postfix's log (``maillog_file`` or the journal) -- when mail last
  left over the onion transport and when it last failed, within a window;
- :mod:`.tor_health`: Tor's sending side through an open control connection -- bootstrap,
  ``status/circuit-established``, HSFETCH of partner descriptors with a bounded wait;
- :mod:`.verdicts`: thresholds in seconds and the :class:`~onion_gateway.status.Check` verdicts with
  one-line suggestions (restart tor, check the partner's SRV record, check the wrapper).
- :mod:`.report`: :func:`~onion_gateway.health.report.assess` runs all of the above and returns the
  checks plus the figures behind them (for metrics); it never raises for what it inspects.

docs/health.md explains the verdicts for the postmaster.
"""
