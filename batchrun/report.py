"""Turning results into tables for people and stable JSON for scripts (stdout)."""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable
from typing import Any

from rich.console import Console
from rich.table import Table

from batchrun.apps import App
from batchrun.batch import BatchResult, PlanResult
from batchrun.manifest import Manifest
from batchrun.plan import ACTIONS
from batchrun.validate import visible

SHOW_FAILURES = 20

OUTCOME_LABELS = {
    "done": "completed",
    "partial": "completed, some outputs in error",
    "failed": "failed",
    "download_failed": "download failed (re-run to retry)",
    "skipped_failed": "failed earlier (--retry-failed to retry)",
    "not_submitted": "not submitted",
}


def plan_table(result: PlanResult) -> Table:
    plan = result.plan
    table = Table(title=f"plan for {result.spec.path}", title_justify="left")
    table.add_column("app", no_wrap=True, min_width=12)
    for action in ACTIONS:
        table.add_column(_ACTION_HEADERS[action], justify="right")
    table.add_column("not in spec", justify="right")
    for app_id, counts in plan.counts.items():
        app = plan.apps[app_id]
        table.add_row(
            app.name,
            *(str(counts[a]) for a in ACTIONS),
            str(plan.orphaned.get(app_id, 0)),
        )
    for app_id, count in plan.orphaned.items():
        if app_id not in plan.counts:
            table.add_row(app_id, *("0" for _ in ACTIONS), str(count))
    return table


_ACTION_HEADERS = {
    "submit": "to submit",
    "resume": "to resume",
    "retry": "to retry",
    "done": "done",
    "failed": "failed (kept)",
}


def plan_json(result: PlanResult) -> dict[str, Any]:
    plan = result.plan
    return {
        "spec": str(result.spec.path),
        "manifest": str(result.manifest),
        "output_dir": str(result.output_dir),
        "jobs": len(plan.steps),
        "apps": [
            {
                "app_id": app_id,
                "name": plan.apps[app_id].name,
                **{a: counts[a] for a in ACTIONS},
                "not_in_spec": plan.orphaned.get(app_id, 0),
            }
            for app_id, counts in plan.counts.items()
        ],
        "changed_apps": [
            {"app_id": c.app.app_id, "name": c.app.name, "affected": c.affected}
            for c in plan.changed
        ],
    }


def summary_table(result: BatchResult) -> Table:
    tally = result.tally
    table = Table(title="batchrun summary", title_justify="left", show_header=False)
    table.add_column("what")
    table.add_column("n", justify="right")
    for outcome, label in OUTCOME_LABELS.items():
        if tally.outcomes[outcome] or outcome == "done":
            table.add_row(label, str(tally.outcomes[outcome]))
    finished = max(1, tally.outcomes["done"] + tally.outcomes["partial"])
    table.add_row(
        "requests", f"{result.requests} ({result.requests / finished:.2f} a job)"
    )
    table.add_row("429 answers", str(result.rate_limited))
    table.add_row("time", f"{result.elapsed:.1f} s")
    table.add_row("results by", result.results)
    table.add_row("outputs", str(result.planned.output_dir))
    table.add_row("manifest", str(result.planned.manifest))
    return table


def failure_lines(failures: Iterable[tuple[str, str, str]]) -> list[str]:
    items = list(failures)
    lines = [f"  {key} ({app}): {reason}" for key, app, reason in items[:SHOW_FAILURES]]
    if len(items) > SHOW_FAILURES:
        lines.append(f"  ... and {len(items) - SHOW_FAILURES} more: `batchrun status`")
    return lines


def summary_json(result: BatchResult) -> dict[str, Any]:
    tally = result.tally
    return {
        "spec": str(result.planned.spec.path),
        "manifest": str(result.planned.manifest),
        "output_dir": str(result.planned.output_dir),
        "jobs": len(result.planned.plan.steps),
        "outcomes": {k: tally.outcomes[k] for k in OUTCOME_LABELS},
        "output_errors": tally.output_errors,
        "failures": [
            {"key": key, "app": app, "reason": reason}
            for key, app, reason in tally.failures
        ],
        "requests": result.requests,
        "rate_limited": result.rate_limited,
        "elapsed_s": round(result.elapsed, 3),
        "results": result.results,
        "stopped": tally.stop_reason or None,
        "exit_code": result.exit_code,
    }


def status_counts(manifest: Manifest) -> dict[str, Counter[str]]:
    """Jobs per app and state, folded from a manifest."""
    names = {}
    for header in manifest.headers:
        for app_id, app in (header.get("apps") or {}).items():
            names[app_id] = app.get("name") or app_id
    per_app: dict[str, Counter[str]] = {}
    for state in manifest.jobs.values():
        name = names.get(state.app_id, state.app_id)
        label = "done" if state.done else state.state
        if label == "finished" and state.run and state.run.get("status") == "completed":
            label = "downloading"
        per_app.setdefault(name, Counter())[label] += 1
    return per_app


STATUS_COLUMNS = ("planned", "submitting", "submitted", "downloading", "done", "failed")


def status_table(manifest: Manifest) -> Table:
    table = Table(title=f"status of {manifest.path}", title_justify="left")
    table.add_column("app", no_wrap=True, min_width=12)
    for column in STATUS_COLUMNS:
        table.add_column(column, justify="right")
    for name, counts in status_counts(manifest).items():
        table.add_row(name, *(str(counts[c]) for c in STATUS_COLUMNS))
    return table


def status_failures(manifest: Manifest) -> list[tuple[str, str, str]]:
    return [
        (
            s.key,
            s.app_id,
            f"{(s.failure or {}).get('code')}: {(s.failure or {}).get('reason')}",
        )
        for s in manifest.jobs.values()
        if s.state == "failed"
    ]


def status_json(manifest: Manifest) -> dict[str, Any]:
    return {
        "manifest": str(manifest.path),
        "jobs": len(manifest.jobs),
        "apps": {
            name: dict(counts) for name, counts in status_counts(manifest).items()
        },
        "failures": [
            {"key": key, "app_id": app, "reason": reason}
            for key, app, reason in status_failures(manifest)
        ],
    }


def parameter_lines(app: App) -> list[str]:
    """An app's parameters as a spec writes them, whitespace made visible."""
    lines = [f"{app.name} ({app.app_id})"]
    for parameter in app.parameters:
        if parameter.default is None:
            default = "no default: required"
        else:
            default = f"default {_shown(parameter.default)}"
        lines.append(f"  {_shown(parameter.name)}: {parameter.type}, {default}")
        if parameter.options:
            lines.append(
                "    options: " + ", ".join(_shown(o) for o in parameter.options)
            )
        if parameter.accept:
            lines.append("    accepts: " + ", ".join(parameter.accept))
    return lines


def _shown(text: str) -> str:
    """Quoted; spaces drawn as ␣ only where they could trip someone up."""
    tricky = text != text.strip() or "  " in text
    return repr(visible(text) if tricky else text)


def print_table(table: Table) -> None:
    console = Console(soft_wrap=True)
    if not console.is_terminal:
        # Piped or logged: 80 columns would truncate app names; there is no screen.
        console = Console(soft_wrap=True, width=120)
    console.print(table)
