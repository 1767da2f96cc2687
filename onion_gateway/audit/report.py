"""The audit's result: one :class:`AuditReport` per listener, its outcome and exit code, as text or JSON.

Exit codes (issue 4): 0 safe, 1 open relay confirmed, 2 risky configuration not exploitable now,
3 inconclusive, 64 usage error, 69 target unreachable. Several listeners: the worst one wins, in the
order 1 > 2 > 69 > 3 > 0.
"""

from __future__ import annotations

import enum
import json
from dataclasses import dataclass, field

from onion_gateway.audit.policy import CLIENT_CHECK_REASONS, Check, ClientCheck, EffectivePolicy, Finding, Severity
from onion_gateway.audit.probe import ProbeResult, Verdict


class Outcome(enum.Enum):
    """The verdict on one listener; the value is the exit code."""

    SAFE = 0
    OPEN_RELAY = 1
    RISKY = 2
    INCONCLUSIVE = 3
    UNREACHABLE = 69


EXIT_USAGE = 64
_SEVERITY_ORDER = [Outcome.OPEN_RELAY, Outcome.RISKY, Outcome.UNREACHABLE, Outcome.INCONCLUSIVE, Outcome.SAFE]


@dataclass
class AuditReport:
    """Everything the audit found about one listener.

    :param target: what was probed (``127.0.0.1:2525`` or ``unix:/path``).
    :param listener: where it came from and which master.cf service serves it (a dict for JSON).
    :param client_address: the address the probes came from, as the server saw it.
    :param policy: the smtpd's effective policy, or ``None`` when no master.cf service was found.
    :param findings: static findings, most severe first.
    :param control: the positive control, or ``None`` when there was no control recipient.
    :param probes: the catalogue's results.
    :param error: why the target could not be probed, if it could not.
    :param probed: ``False`` when live probes were not asked for (``--static-only``).
    """

    target: str
    listener: dict = field(default_factory=dict)
    client_address: str = ""
    policy: EffectivePolicy | None = None
    findings: list[Finding] = field(default_factory=list)
    control: ProbeResult | None = None
    probes: list[ProbeResult] = field(default_factory=list)
    error: str = ""
    probed: bool = True

    @property
    def control_passed(self) -> bool:
        """True if the positive control (RCPT to a served domain) got a 2xx reply."""
        return self.control is not None and self.control.reply is not None and 200 <= self.control.reply.code < 300

    @property
    def accepted(self) -> list[ProbeResult]:
        """The probes the server accepted (relaying confirmed)."""
        return [p for p in self.probes if p.verdict is Verdict.ACCEPTED]

    @property
    def critical(self) -> list[Finding]:
        """The findings of critical severity."""
        return [f for f in self.findings if f.severity is Severity.CRITICAL]

    @property
    def outcome(self) -> Outcome:
        """OPEN_RELAY if any probe was accepted; else RISKY on a critical finding; else UNREACHABLE if
        not probed; else INCONCLUSIVE unless the control passed and every probe was refused; else SAFE."""
        if self.accepted:
            return Outcome.OPEN_RELAY
        if self.critical:
            return Outcome.RISKY
        if self.error:
            return Outcome.UNREACHABLE
        if not self.probed:
            return Outcome.INCONCLUSIVE
        ran = [p for p in self.probes if p.verdict is not Verdict.SKIPPED]
        if not self.control_passed or not ran or not all(p.verdict.safe for p in ran):
            return Outcome.INCONCLUSIVE
        return Outcome.SAFE

    @property
    def exit_code(self) -> int:
        """The command's exit code: 0 safe, 1 open relay, 2 risky, 3 inconclusive, 69 unreachable."""
        return self.outcome.value

    @property
    def reasons(self) -> list[str]:
        """Why the outcome is what it is, in words."""
        out = []
        if self.error:
            out.append(f"not probed: {self.error}")
        if self.accepted:
            names = [p.spec.name for p in self.accepted]
            more = f" and {len(names) - 6} more" if len(names) > 6 else ""
            out.append(f"{len(names)} probe(s) got a foreign recipient accepted: {', '.join(names[:6])}{more}")
        if self.critical:
            out.append(f"{len(self.critical)} critical finding(s)")
        if not self.probed:
            out.append("static analysis only: no live probes")
        elif not self.error:
            if self.control is None:
                out.append("no control recipient known (use --control-recipient): cannot tell safe from broken")
            elif not self.control_passed:
                why = [f.value for f in self.findings if f.check is Check.CLIENT_ADDRESS_CHECK
                       and f.title == CLIENT_CHECK_REASONS[ClientCheck.REVERSE_DNS]]
                likely = f" -- {CLIENT_CHECK_REASONS[ClientCheck.REVERSE_DNS]} ({'; '.join(why)})" if why else ""
                out.append(f"control recipient refused ({self.control.reply}): probes prove nothing{likely}")
            unsure = [p.spec.name for p in self.probes if p.verdict is Verdict.INCONCLUSIVE]
            if unsure:
                out.append("inconclusive probes: " + ", ".join(unsure))
        return out

    def to_dict(self) -> dict:
        """The report as JSON-ready data (the ``--json`` shape shown in README)."""
        return {
            "target": self.target,
            "listener": self.listener,
            "client_address": self.client_address,
            "outcome": self.outcome.name.lower(),
            "exit_code": self.exit_code,
            "reasons": self.reasons,
            "effective_policy": self.policy.to_dict() if self.policy else None,
            "findings": [f.to_dict() for f in self.findings],
            "control": self.control.to_dict() if self.control else None,
            "probes": [p.to_dict() for p in self.probes],
            "error": self.error or None,
            "probed": self.probed,
        }


def overall_exit_code(reports: list[AuditReport]) -> int:
    """The worst outcome of several listeners (1 > 2 > 69 > 3 > 0); 3 when there are none."""
    if not reports:
        return Outcome.INCONCLUSIVE.value
    return min((r.outcome for r in reports), key=_SEVERITY_ORDER.index).value


def to_json(reports: list[AuditReport]) -> str:
    """``{"exit_code": N, "reports": [...]}`` as indented JSON (README.md "JSON shape" shows it)."""
    return json.dumps({"exit_code": overall_exit_code(reports), "reports": [r.to_dict() for r in reports]},
                      indent=2)


def to_text(reports: list[AuditReport]) -> str:
    """A human-readable report: per listener the outcome, findings and a probe table."""
    blocks = []
    for report in reports:
        lines = [f"== {report.target}  ->  {report.outcome.name} (exit {report.exit_code})"]
        listener = report.listener
        if listener.get("source"):
            lines.append(f"   from     {listener['source']}")
        if listener.get("service"):
            via = f" via {listener['via']}" if listener.get("via") else ""
            lines.append(f"   service  {listener['service']}{via}")
        if listener.get("services"):
            lines.append(f"   shared   {', '.join(listener['services'])} (each connection goes to any of them)")
        if report.client_address:
            lines.append(f"   client   {report.client_address}")
        if listener.get("helo"):
            lines.append(f"   helo     {listener['helo']}")
        if report.probes:
            counts: dict[str, int] = {}
            for p in report.probes:
                counts[p.verdict.value] = counts.get(p.verdict.value, 0) + 1
            summary = ", ".join(f"{n} {v}" for v, n in counts.items())
            control = "passed" if report.control_passed else "FAILED" if report.control else "none"
            lines.append(f"   probes   {summary}; control {control}")
        for reason in report.reasons:
            lines.append(f"   why      {reason}")
        if report.findings:
            lines.append("")
            lines.append("   findings:")
            for f in report.findings:
                lines.append(f"   [{f.severity.value.upper():8}] {f.title}")
                lines.append(f"              value:  {f.value}")
                lines.append(f"              source: {f.source}")
        rows = ([report.control] if report.control else []) + report.probes
        if rows:
            lines.append("")
            width = max(len(p.spec.name) for p in rows)
            lines.append(f"   {'probe':{width}}  {'verdict':14}  {'reply':40}  envelope")
            for p in rows:
                reply = str(p.reply) if p.reply else p.note
                envelope = f"{p.spec.mail_from} -> {' '.join(p.spec.rcpt_to)}"
                if p.spec.xclient:
                    envelope = f"XCLIENT {p.spec.xclient}; {envelope}"
                if p.spec.proxy_source:
                    envelope = f"PROXY from {p.spec.proxy_source}; {envelope}"
                lines.append(f"   {p.spec.name:{width}}  {p.verdict.value:14}  {_cut(reply, 40):40}  {envelope}")
        blocks.append("\n".join(lines))
    return "\n\n".join(blocks)


def _cut(text: str, width: int) -> str:
    return text if len(text) <= width else text[: width - 1] + "…"
