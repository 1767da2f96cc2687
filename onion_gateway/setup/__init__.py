"""``onion-gateway setup``: the installer lifecycle, shaped after certbot's installers.

Map of the package (dependencies point down; :mod:`.state` and :mod:`.settings` import nothing else
from this package, so ``status`` and the audit can import them without the installer)::

    settings.py   SetupSettings: the [setup] table, defaults in one place
    state.py      SetupRecord: what setup built (read by status, audit-open-relay, the daemon)
    plan.py       plan_setup -> Plan (FileChange, PostconfChange, OnionStep); the relay-policy refusal
    apply.py      apply_plan (the one place that writes), recover_interrupted, rollback, settle_tor
    journal.py    the typed records of what setup changed, the write-ahead journal, undo
    legacy.py     manifests of onion-gateway 0.1 (whole-file copies) read as journal records

This ``__init__`` imports nothing: ``import onion_gateway.setup.state`` must not pull in the installer
(which imports the audit, which imports the state record).
"""
