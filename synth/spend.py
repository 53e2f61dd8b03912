"""What a run spent, as people read it: the same lines in the summary, `synth inspect`, the report
and the dataset card, from the manifest alone (its sessions' usage and the prices it ran with)."""

from __future__ import annotations

from .pricing import manifest_costs, money
from .usage import flatten, run_totals, tokens_text


def spend(manifest: dict) -> dict:
    """The run's usage and cost as data: totals, per stage, per backend, per session, and the cost
    (None without prices), also per 1,000 output rows when the run has an output."""
    totals = run_totals(manifest)
    rows = (manifest.get("output") or {}).get("rows")
    return {
        "total": flatten(totals),
        "stages": flatten(totals, "stage"),
        "backends": flatten(totals, "backend"),
        "by_stage_backend": totals,
        "sessions": [flatten(s.get("usage") or {}) for s in manifest.get("sessions") or []],
        "cost": manifest_costs(manifest, totals, rows),
        "hours": sum(s.get("seconds") or 0.0 for s in manifest.get("sessions") or []) / 3600,
    }


def spend_lines(manifest: dict) -> list[str]:
    """Plain lines (no markup): the whole run, each stage and backend, each session, the cost."""
    found = spend(manifest)
    sessions = manifest.get("sessions") or []
    if not any(s.get("usage") for s in sessions):
        return []  # a run made before synth kept usage, or one that sent nothing yet
    cost = found["cost"]
    lines = [f"usage over {len(sessions)} session(s): {tokens_text(found['total'])}"]
    for stage, backends in found["by_stage_backend"].items():
        for backend, counters in backends.items():
            priced = ""
            if cost is not None and len(backends) == 1 and stage in cost["stages"]:
                priced = f"; {money(cost['stages'][stage], cost['currency'])}"
            lines.append(f"  {stage or '(outside a stage)'} via {backend}: {tokens_text(counters)}{priced}")
    for number, (session, counters) in enumerate(zip(sessions, found["sessions"], strict=False), start=1):
        if counters:
            budget = f", budget {session['budget']}" if session.get("budget") else ""
            status = session.get("status", "?")
            lines.append(f"  session {number} ({status}{budget}): {tokens_text(counters)}")
    if cost is None:
        lines.append(f"cost: no prices given (add pricing: to a backend); {found['hours']:,.3f} hours of run time")
    else:
        per = cost.get("per_1000_rows")
        per_rows = f", {money(per, cost['currency'])} per 1,000 output rows" if per is not None else ""
        lines.append(f"cost: {money(cost['total'], cost['currency'])} in total{per_rows}")
        for stage, amount in cost["stages"].items():
            if any(stage == s and len(b) > 1 for s, b in found["by_stage_backend"].items()):
                lines.append(f"  {stage}: {money(amount, cost['currency'])}")
        for backend, hours in cost["server_hours"].items():
            lines.append(f"  {backend}: {hours:,.3f} server-hours")
    return lines
