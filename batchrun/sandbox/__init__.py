"""batchrun's sandbox: a local Lamina-compatible server with real outputs.

    from batchrun.sandbox import Sandbox, SandboxConfig, Faults

    async with Sandbox(SandboxConfig(time_scale=0.01)) as sandbox:
        ...  # LAMINA_BASE_URL=sandbox.base_url, LAMINA_API_KEY=sandbox.api_key

The modules, in the order a request meets them: server (the /v1 API and admin routes),
resolver (input validation), runs (store and simulated lifecycle), media (fetching url
inputs), storage (the separate storage/CDN host), webhooks (signing and delivery),
ratelimit, faults and stats; catalog and render supply the apps and their outputs;
state keeps all of it in a state dir across restarts, when asked.
"""

from batchrun.sandbox.config import SandboxConfig
from batchrun.sandbox.faults import Faults, FaultsError
from batchrun.sandbox.service import Sandbox, run_sandbox
from batchrun.sandbox.state import SandboxStateError
from batchrun.sandbox.stats import RunRecord, SandboxStats, WebhookAttempt

__all__ = [
    "Faults",
    "FaultsError",
    "RunRecord",
    "Sandbox",
    "SandboxConfig",
    "SandboxStateError",
    "SandboxStats",
    "WebhookAttempt",
    "run_sandbox",
]
