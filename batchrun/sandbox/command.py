"""`batchrun sandbox`: serve the sandbox from the command line until Ctrl-C."""

from __future__ import annotations

import logging
import sys

import click

from batchrun.sandbox.catalog import CatalogError
from batchrun.sandbox.config import SandboxConfig
from batchrun.sandbox.faults import Faults
from batchrun.sandbox.service import Sandbox, run_sandbox
from batchrun.sandbox.state import SandboxStateError


def _run_seconds(
    ctx: click.Context, param: click.Parameter, value: str
) -> tuple[float, float]:
    try:
        low, high = (float(part) for part in value.split(","))
    except ValueError:
        raise click.BadParameter(
            f"expected MIN,MAX in seconds, e.g. 1,2; got {value!r}"
        ) from None
    if not 0 <= low <= high:
        raise click.BadParameter(f"expected 0 <= MIN <= MAX, got {value!r}")
    return low, high


_rate = click.FloatRange(0.0, 1.0)


@click.command("sandbox")
@click.option("--host", default="127.0.0.1", show_default=True, help="Address to bind.")
@click.option("--port", default=8765, show_default=True, help="API port (0: any free).")
@click.option(
    "--storage-port", default=0, show_default=True, help="Storage host port (0: any)."
)
@click.option(
    "--apps",
    "apps_file",
    type=click.Path(exists=True, dir_okay=False),
    help="Catalog JSON to serve instead of the built-in apps.",
)
@click.option("--api-key", help="Key to accept (default: a fresh lma_sandbox_... key).")
@click.option("--rate-limit", default=100, show_default=True, help="Requests/window.")
@click.option("--rate-window", default=60.0, show_default=True, help="Window, seconds.")
@click.option("--queue-seconds", default=0.2, show_default=True, help="Time queued.")
@click.option(
    "--run-seconds",
    default="1,2",
    show_default=True,
    callback=_run_seconds,
    help="Run duration range MIN,MAX in seconds.",
)
@click.option(
    "--failure-rate", type=_rate, default=0.0, help="Share of runs that fail."
)
@click.option(
    "--output-error-rate", type=_rate, default=0.0, help="Share of outputs that error."
)
@click.option(
    "--time-scale",
    type=click.FloatRange(min=0, min_open=True),
    default=1.0,
    show_default=True,
    help="Multiplies every sandbox duration.",
)
@click.option("--credits", type=int, help="Credit balance (default: unlimited).")
@click.option("--credit-cost", default=1, show_default=True, help="Credits per run.")
@click.option(
    "--seed", default=0, show_default=True, help="Seed of every simulation RNG."
)
@click.option(
    "--allow-remote", is_flag=True, help="Fetch/deliver to non-loopback URLs too."
)
@click.option("--error-rate", type=_rate, default=0.0, help="Fault: share of 500s.")
@click.option("--drop-rate", type=_rate, default=0.0, help="Fault: dropped requests.")
@click.option("--lost-response-rate", type=_rate, default=0.0, help="Fault: lost 202s.")
@click.option("--truncate-rate", type=_rate, default=0.0, help="Fault: torn downloads.")
@click.option(
    "--delay", type=float, default=0.0, help="Fault: seconds added per answer."
)
@click.option(
    "--sse-chunk-size", type=int, help="Fault: SSE written N bytes at a time."
)
@click.option("--sse-crlf", is_flag=True, help="Fault: SSE with CRLF line endings.")
@click.option("--sse-comments", is_flag=True, help="Fault: SSE with comment lines.")
@click.option(
    "--webhook-loss-rate", type=_rate, default=0.0, help="Fault: webhooks never sent."
)
@click.option(
    "--state-dir",
    type=click.Path(file_okay=False),
    help="Keep runs, files, key and credits here; reload them on the next start.",
)
@click.option("-v", "--verbose", is_flag=True, help="Log every request (DEBUG).")
def sandbox_command(
    host: str,
    port: int,
    storage_port: int,
    apps_file: str | None,
    api_key: str | None,
    rate_limit: int,
    rate_window: float,
    queue_seconds: float,
    run_seconds: tuple[float, float],
    failure_rate: float,
    output_error_rate: float,
    time_scale: float,
    credits: int | None,
    credit_cost: int,
    seed: int,
    allow_remote: bool,
    error_rate: float,
    drop_rate: float,
    lost_response_rate: float,
    truncate_rate: float,
    delay: float,
    sse_chunk_size: int | None,
    sse_crlf: bool,
    sse_comments: bool,
    webhook_loss_rate: float,
    state_dir: str | None,
    verbose: bool,
) -> None:
    """Serve a local Lamina-compatible API with real outputs, until Ctrl-C.

    The sandbox speaks the Lamina /v1 API (apps, runs, wait, SSE stream, list runs,
    uploads, signed webhooks) and renders real image, video and text outputs with
    Pillow, so batch specs can be tried without spending credits. It prints two
    shell lines to paste (LAMINA_BASE_URL, LAMINA_API_KEY); logs go to stderr.

    \b
    Behaviour:
      --queue-seconds / --run-seconds   how long a run stays queued / runs
      --time-scale F      multiplies every duration (queue and run times, wait and
                          stream timeouts, SSE pings, webhook retries, --rate-window);
                          0.1 makes a 1-2 minute run take 6-12 s
      --failure-rate P    share of runs that fail (every output errors)
      --output-error-rate P   share of outputs that error in otherwise good runs
      --rate-limit N --rate-window S   fixed window per API key (429 beyond it)
      --credits N         balance; each run costs --credit-cost (402 when short)
      --seed N            replays the same timings and failures
      --allow-remote      also fetch input URLs and send webhooks off this machine
      --state-dir DIR     persist, as a real account does: runs, uploaded assets,
                          outputs, credits, rate-limit windows, the API key (made
                          once, unless --api-key) and the webhook signing key are
                          kept in DIR and reloaded on the next start, on any port;
                          old asset and output URLs keep working. Runs that were
                          in flight resume, the downtime counted as elapsed. A
                          saved balance wins over --credits. One sandbox per DIR.

    \b
    Faults (probabilities 0..1; change them live: POST /_sandbox/faults):
      --error-rate        500 INTERNAL_ERROR instead of an answer
      --drop-rate         connection closed before any answer (no run created)
      --lost-response-rate   run created, then its 202 is lost (connection closed)
      --truncate-rate     downloads promise more bytes than they send
      --delay S           real seconds added to every /v1 answer (not scaled)
      --sse-chunk-size N, --sse-crlf, --sse-comments   awkward SSE framing
      --webhook-loss-rate   webhooks never delivered

    Admin routes (no key): GET /_sandbox/stats, POST /_sandbox/faults.

    \b
    Example:
      batchrun sandbox --time-scale 0.1 --failure-rate 0.05 --error-rate 0.02
      batchrun sandbox --state-dir ~/.cache/batchrun-sandbox   # survives restarts
      # then paste the two export lines it prints into the shell running batchrun
    """
    logging.basicConfig(
        stream=sys.stderr,
        level=logging.DEBUG if verbose else logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    faults = Faults(
        error_rate=error_rate,
        drop_rate=drop_rate,
        lost_response_rate=lost_response_rate,
        truncate_rate=truncate_rate,
        delay=delay,
        sse_chunk_size=sse_chunk_size,
        sse_crlf=sse_crlf,
        sse_comments=sse_comments,
        webhook_loss_rate=webhook_loss_rate,
    )
    try:
        config = SandboxConfig(
            api_key=api_key,
            apps_file=apps_file,
            queue_seconds=queue_seconds,
            run_seconds=run_seconds,
            failure_rate=failure_rate,
            output_error_rate=output_error_rate,
            rate_limit=rate_limit,
            rate_window=rate_window,
            time_scale=time_scale,
            credits=credits,
            credit_cost=credit_cost,
            seed=seed,
            faults=faults,
            allow_remote=allow_remote,
            state_dir=state_dir,
        )
        run_sandbox(config, host, port, storage_port=storage_port, on_ready=_announce)
    except SandboxStateError as exc:
        raise click.ClickException(str(exc)) from exc
    except (ValueError, CatalogError) as exc:
        raise click.UsageError(str(exc)) from exc
    except OSError as exc:
        raise click.ClickException(f"cannot serve on {host}:{port}: {exc}") from exc


def _announce(sandbox: Sandbox) -> None:
    # stdout carries exactly what a user pastes; everything else is a log line.
    click.echo(f"export LAMINA_BASE_URL={sandbox.base_url}")
    click.echo(f"export LAMINA_API_KEY={sandbox.api_key}")
    sys.stdout.flush()
    logging.getLogger(__name__).info(
        "sandbox.ready api=%s storage=%s admin=%s/_sandbox/stats (Ctrl-C to stop)",
        sandbox.base_url,
        sandbox.storage_url,
        sandbox.base_url,
    )
