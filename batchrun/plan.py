"""What `apply` would do: the spec's jobs set against what the manifest already knows.

Pure: it takes the expanded jobs, the folded manifest and a way to check files on disk,
and sorts every job into one action. `batchrun plan` prints this; `batchrun apply`
executes it.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from batchrun.apps import App
from batchrun.jobs import Job
from batchrun.manifest import JobState

# The actions, in the order the plan table shows them.
SUBMIT = "submit"  # never sent
RESUME = "resume"  # sent before: re-attach by run ID, reconcile, or finish downloads
RETRY = "retry"  # failed before and --retry-failed was given
DONE = "done"  # finished and every file present and intact
FAILED = "failed"  # failed before; left alone without --retry-failed
ACTIONS = (SUBMIT, RESUME, RETRY, DONE, FAILED)


@dataclass(frozen=True, slots=True)
class Step:
    """One job and what apply will do with it."""

    job: Job
    action: str
    state: JobState | None


@dataclass(frozen=True)
class AppChange:
    """An app whose parameters differ from those recorded in the manifest."""

    app: App
    affected: int  # jobs of this app that still have work to do (not done)


@dataclass
class Plan:
    # Not in the repr: asyncio.run formats the repr of its task's result when it
    # restores the SIGINT handler, and 100,000 steps took a second to format.
    steps: list[Step] = field(repr=False)
    apps: dict[str, App]
    # app_id -> action -> number of jobs
    counts: dict[str, Counter[str]] = field(default_factory=dict)
    # app_id -> jobs in the manifest that the spec no longer has
    orphaned: dict[str, int] = field(default_factory=dict)
    changed: list[AppChange] = field(default_factory=list)

    @property
    def totals(self) -> Counter[str]:
        total: Counter[str] = Counter()
        for counts in self.counts.values():
            total.update(counts)
        return total

    @property
    def pending(self) -> list[Step]:
        """The steps that need the API."""
        return [s for s in self.steps if s.action in (SUBMIT, RESUME, RETRY)]


def build_plan(
    jobs: list[Job],
    states: Mapping[str, JobState],
    apps: Mapping[str, App],
    *,
    recorded_apps: Mapping[str, Mapping[str, Any]],
    retry_failed: bool,
    files_intact: Callable[[JobState], bool],
) -> Plan:
    """Sort each job into an action; note orphaned jobs and apps that changed."""
    plan = Plan(steps=[], apps=dict(apps))
    wanted = set()
    for job in jobs:
        wanted.add(job.key)
        state = states.get(job.key)
        action = _action(state, retry_failed, files_intact)
        plan.steps.append(Step(job, action, state))
        plan.counts.setdefault(job.app_id, Counter())[action] += 1

    for key, state in states.items():
        if key not in wanted:
            plan.orphaned[state.app_id] = plan.orphaned.get(state.app_id, 0) + 1

    for app_id, app in apps.items():
        recorded = recorded_apps.get(app_id)
        if recorded and recorded.get("digest") != app.digest:
            affected = sum(
                1
                for step in plan.steps
                if step.job.app_id == app_id and step.action != DONE
            )
            plan.changed.append(AppChange(app, affected))
    return plan


def _action(
    state: JobState | None,
    retry_failed: bool,
    files_intact: Callable[[JobState], bool],
) -> str:
    if state is None or (state.state == "planned" and state.run_id is None):
        return SUBMIT
    if state.state == "failed":
        return RETRY if retry_failed else FAILED
    if state.done and files_intact(state):
        return DONE
    return RESUME
