"""The `batchrun` command: parse options, call the library, render, map errors."""

from __future__ import annotations

import json
import logging
import sys
from pathlib import Path
from typing import Any

import click

from batchrun import __version__
from batchrun.batch import (
    RESULT_STRATEGIES,
    Overrides,
    Target,
    apply,
    describe_app,
    list_apps,
    plan,
)
from batchrun.errors import BatchrunError, SpecError, UsageError
from batchrun.manifest import Manifest
from batchrun.progress import ProgressDisplay
from batchrun.report import (
    failure_lines,
    parameter_lines,
    plan_json,
    plan_table,
    print_table,
    status_failures,
    status_json,
    status_table,
    summary_json,
    summary_table,
)
from batchrun.sandbox.command import sandbox_command

EXIT_INTERRUPTED = 130
EXIT_INTERNAL = 70

log = logging.getLogger("batchrun")


class _Group(click.Group):
    """Maps batchrun's errors to one line on stderr and their exit codes."""

    def invoke(self, ctx: click.Context) -> Any:
        debug = "--debug" in sys.argv[1:]
        try:
            return super().invoke(ctx)
        except SpecError as exc:
            for problem in exc.problems:
                click.echo(str(problem), err=True)
            count = len(exc.problems)
            noun = "problem" if count == 1 else "problems"
            click.echo(
                f"batchrun: {count} {noun} in the spec; nothing was submitted", err=True
            )
            ctx.exit(exc.exit_code)
        except BatchrunError as exc:
            if debug:
                log.exception("error")
            click.echo(f"batchrun: error: {exc}", err=True)
            ctx.exit(exc.exit_code)
        except KeyboardInterrupt:
            click.echo(
                "batchrun: interrupted; the manifest is safe: run the same command "
                "again to resume",
                err=True,
            )
            ctx.exit(EXIT_INTERRUPTED)
        except (click.exceptions.Exit, click.ClickException, click.Abort):
            raise
        except Exception as exc:
            if debug:
                raise
            click.echo(
                f"batchrun: internal error: {exc.__class__.__name__}: {exc}; please "
                "report it, with the output of the same command run with --debug",
                err=True,
            )
            ctx.exit(EXIT_INTERNAL)


def _setup_logging(verbose: int, debug: bool) -> None:
    level = logging.DEBUG if debug else (logging.INFO if verbose else logging.WARNING)
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter("batchrun: %(levelname)s %(message)s"))
    root = logging.getLogger("batchrun")
    root.handlers[:] = [handler]
    root.setLevel(level)
    root.propagate = False


@click.group(cls=_Group, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="batchrun")
@click.option("-v", "--verbose", count=True, help="Log each step (INFO).")
@click.option("--debug", is_flag=True, help="Log every request and show tracebacks.")
def cli(verbose: int, debug: bool) -> None:
    """Run batches of Lamina app runs from a YAML spec: validated before anything is
    spent, rate-limited, resumable after any crash.

    \b
    Try it locally, no account needed:
      batchrun apply specs/cartoonify.yaml --sandbox

    Exit codes: 0 all jobs completed, 1 some jobs failed, 2 invalid spec or usage,
    3 manifest problem, 4 the API refused, 5 the API unreachable, 70 internal error,
    130 interrupted.
    """
    _setup_logging(verbose, debug)


def _raise_verbosity(ctx: click.Context, param: click.Parameter, value: Any) -> None:
    """-v / --debug after the command name work as they do before it."""
    if not value:
        return
    root = logging.getLogger("batchrun")
    level = logging.DEBUG if param.name == "debug" else logging.INFO
    root.setLevel(min(root.level or logging.WARNING, level))


def _log_options(func: Any) -> Any:
    func = click.option(
        "--debug",
        is_flag=True,
        expose_value=False,
        callback=_raise_verbosity,
        help="Log every request and show tracebacks.",
    )(func)
    return click.option(
        "-v",
        "--verbose",
        count=True,
        expose_value=False,
        callback=_raise_verbosity,
        help="Log each step (INFO).",
    )(func)


def _api_options(func: Any) -> Any:
    options = [
        click.option(
            "--sandbox",
            is_flag=True,
            help="Run against batchrun's built-in local Lamina server (free, no key).",
        ),
        click.option(
            "--api-key",
            envvar="LAMINA_API_KEY",
            show_envvar=True,
            help="Lamina API key (lma_...).",
        ),
        click.option(
            "--base-url",
            envvar="LAMINA_BASE_URL",
            show_envvar=True,
            help="API base URL [default: https://app.uselamina.ai].",
        ),
    ]
    for option in reversed(options):
        func = option(func)
    return func


def _batch_options(func: Any) -> Any:
    options = [
        click.option(
            "--out",
            "output_dir",
            type=click.Path(path_type=Path),
            help="Output folder [default: spec setting, else ./out/SPEC-NAME].",
        ),
        click.option(
            "--manifest",
            type=click.Path(path_type=Path),
            help="Manifest file [default: OUT/manifest.jsonl].",
        ),
        click.option(
            "--concurrency",
            type=click.IntRange(1, 1000),
            help="Runs in flight at once [default: spec setting, else 8].",
        ),
        click.option(
            "--rate",
            type=click.IntRange(1, 100_000),
            help="Requests per minute [default: the account's limit].",
        ),
        click.option(
            "--retries",
            type=click.IntRange(0, 100),
            help="Retries per request for retryable failures [default: 5].",
        ),
        click.option(
            "--max-jobs",
            type=click.IntRange(1),
            help="Refuse specs that expand to more jobs [default: 10000].",
        ),
        click.option(
            "--results",
            type=click.Choice(RESULT_STRATEGIES),
            help="How to learn that runs finished [default: auto].",
        ),
        click.option(
            "--webhook-url", help="Public URL that reaches the local webhook receiver."
        ),
        click.option(
            "--webhook-listen", help="host:port for the local webhook receiver."
        ),
        click.option(
            "--retry-failed",
            is_flag=True,
            help="Submit again the jobs that failed in earlier runs.",
        ),
        click.option(
            "--json",
            "as_json",
            is_flag=True,
            help="Print the result as JSON on stdout.",
        ),
    ]
    for option in reversed(options):
        func = option(func)
    return func


def _target(sandbox: bool, api_key: str | None, base_url: str | None) -> Target:
    return Target(base_url=base_url, api_key=api_key, sandbox=sandbox)


def _overrides(kwargs: dict[str, Any]) -> Overrides:
    return Overrides(
        output_dir=kwargs.get("output_dir"),
        manifest=kwargs.get("manifest"),
        concurrency=kwargs.get("concurrency"),
        rate=kwargs.get("rate"),
        retries=kwargs.get("retries"),
        max_jobs=kwargs.get("max_jobs"),
        results=kwargs.get("results"),
        webhook_url=kwargs.get("webhook_url"),
        webhook_listen=kwargs.get("webhook_listen"),
        retry_failed=bool(kwargs.get("retry_failed")),
    )


@cli.command("apply")
@_log_options
@click.argument("spec", type=click.Path(path_type=Path))
@_api_options
@_batch_options
def apply_command(
    spec: Path,
    sandbox: bool,
    api_key: str | None,
    base_url: str | None,
    as_json: bool,
    **kwargs: Any,
) -> None:
    """Run every job of SPEC and download the outputs.

    Validates every job against the apps' parameters before anything is submitted,
    records each step in the manifest, and resumes from it when run again: finished jobs
    are skipped, submitted ones re-attached, nothing is submitted twice.

    \b
    Example:
      batchrun apply specs/cartoonify.yaml --sandbox
    """
    result = apply(
        spec,
        target=_target(sandbox, api_key, base_url),
        overrides=_overrides(kwargs),
        progress=ProgressDisplay,
    )
    if as_json:
        click.echo(json.dumps(summary_json(result), indent=2))
    else:
        print_table(summary_table(result))
        if result.tally.failures:
            click.echo("problems:")
            for line in failure_lines(result.tally.failures):
                click.echo(line)
        if result.tally.stop_reason:
            click.echo(f"submissions stopped: {result.tally.stop_reason}")
    sys.exit(result.exit_code)


@cli.command("plan")
@_log_options
@click.argument("spec", type=click.Path(path_type=Path))
@_api_options
@_batch_options
def plan_command(
    spec: Path,
    sandbox: bool,
    api_key: str | None,
    base_url: str | None,
    as_json: bool,
    **kwargs: Any,
) -> None:
    """Show what `apply` would do with SPEC, without spending anything.

    Fetches the apps' parameters, validates every job, and compares with the manifest:
    jobs to submit, to resume, to retry, already done, and no longer in the spec.

    \b
    Example:
      batchrun plan specs/cartoonify.yaml --sandbox
    """
    result = plan(
        spec, target=_target(sandbox, api_key, base_url), overrides=_overrides(kwargs)
    )
    if as_json:
        click.echo(json.dumps(plan_json(result), indent=2))
        return
    for change in result.plan.changed:
        click.echo(
            f"warning: {change.app.name} changed its parameters since this manifest "
            f"was started; {change.affected} unfinished jobs will use the new ones",
            err=True,
        )
    print_table(plan_table(result))
    count = len(result.plan.steps)
    click.echo(
        f"{count} {'job' if count == 1 else 'jobs'}, all valid; nothing was submitted. "
        f"Manifest: {result.manifest}"
    )


@cli.command("status")
@_log_options
@click.argument("manifest", type=click.Path(path_type=Path), required=False)
@click.option("--json", "as_json", is_flag=True, help="Print the status as JSON.")
def status_command(manifest: Path | None, as_json: bool) -> None:
    """Fold a manifest into a table of job states and failures.

    Without MANIFEST, uses the one manifest under ./out (the default output folder).

    \b
    Example:
      batchrun status out/cartoonify/manifest.jsonl
    """
    path = manifest or _only_manifest()
    folded = Manifest.read(path)
    if as_json:
        click.echo(json.dumps(status_json(folded), indent=2))
        return
    print_table(status_table(folded))
    failures = status_failures(folded)
    if failures:
        click.echo("failures:")
        for line in failure_lines(failures):
            click.echo(line)


def _only_manifest() -> Path:
    found = sorted(Path("out").glob("*/manifest.jsonl"))
    if len(found) == 1:
        return found[0]
    if not found:
        raise UsageError("no manifest under ./out; pass the manifest's path")
    raise UsageError(
        "several manifests under ./out ("
        + ", ".join(str(p) for p in found[:3])
        + "); pass one"
    )


@cli.command("apps")
@_log_options
@click.argument("app", required=False)
@click.option("--search", default="", help="Only apps whose name or description match.")
@_api_options
def apps_command(
    app: str | None,
    search: str,
    sandbox: bool,
    api_key: str | None,
    base_url: str | None,
) -> None:
    """List the apps the API offers, with their IDs; or one APP's parameters.

    With APP (a name or an appId), prints each parameter as a spec must write it:
    exact name and option labels, spaces shown as ␣ where they matter.

    \b
    Examples:
      batchrun apps --sandbox
      batchrun apps "Full Set Catalog Generation" --sandbox
    """
    target = _target(sandbox, api_key, base_url)
    if app is not None:
        for line in parameter_lines(describe_app(target, app)):
            click.echo(line)
        return
    apps = list_apps(target, search)
    for summary in apps:
        click.echo(f"{summary.get('appId')}  {summary.get('name')}")
    if not apps:
        click.echo(f"no app matches {search!r}" if search else "no apps", err=True)


cli.add_command(sandbox_command)


def main() -> None:
    cli(prog_name="batchrun")
