"""How long load_spec + plan_jobs take, and how much memory, for 100,000-job specs.

Run: python benchmarks/bench_plan.py [--repeat N]

Each scenario runs in a fresh interpreter (so ru_maxrss is its own): once untraced for
the times, once under tracemalloc for the peak of Python allocations. The target is
< 3 s and < 300 MB for 100,000 jobs.
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import tempfile
import time
import tracemalloc
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from batchrun.apps import App
from batchrun.errors import SpecError
from batchrun.jobs import plan_jobs
from batchrun.spec import load_spec

CARTOONIFY: dict[str, Any] = {
    "appId": "3f68debe-df0a-4fc9-bdd3-9d45a4160587",
    "name": "Cartoonify!",
    "parameters": [
        {"name": "Upload", "type": "url", "accept": ["image"],
         "default": "https://media.getmason.io/api/assetlib/x.png"},
        {"name": "Style", "type": "options",
         "options": ["Ghibli", "Simpsons", "Disney / Pixar", "Cyberpunk"]},
        {"name": "Aspect Ratio", "type": "options",
         "options": ["1:1", "4:3", "3:4", "16:9", "9:16"], "default": "1:1"},
    ],
}  # fmt: skip

CATALOG: dict[str, Any] = {
    "appId": "0b7c5a34-6a1e-4d0c-9a57-1c2f3e4d5a6b",
    "name": "Example Catalog App",
    "parameters": [
        {"name": "Front", "type": "url", "accept": ["image"]},
        {"name": "Location", "type": "options", "options": ["Studio", "Urban", "Park"],
         "default": "Studio"},
        {"name": "Prompt", "type": "text"},
    ],
}  # fmt: skip


def build(folder: Path, scenario: str) -> tuple[Path, dict[str, Any]]:
    """Write the scenario's spec (and value files) into `folder`."""
    if scenario == "urls":
        urls = "\n".join(f"https://cdn.example.com/p/{n:05d}.png" for n in range(5_000))
        (folder / "uploads.txt").write_text(urls + "\n")
        spec = """
version: 1
settings:
  max_jobs: 100000
  filename: "{app}/{Upload}-{Style}-{Aspect Ratio}-{output}{ext}"
jobs:
  - app: Cartoonify!
    matrix:
      Upload: {from: uploads.txt}
      Style: [Ghibli, Simpsons, Disney / Pixar, Cyberpunk]
      Aspect Ratio: ["1:1", 4:3, 3:4, 16:9, 9:16]
"""
        app = CARTOONIFY
    elif scenario == "prompts":
        (folder / "front.png").write_bytes(b"\x89PNG" + bytes(100_000))
        products = "\n".join(f"product number {n}" for n in range(33_334))
        (folder / "products.txt").write_text(products + "\n")
        spec = """
version: 1
settings:
  max_jobs: 100002
  filename: "{app}/{product}-{Location}-{index}{ext}"
jobs:
  - app: Example Catalog App
    inputs:
      Front: front.png
      Prompt: "A {product} on a {Location} background"
    matrix:
      product: {from: products.txt}
      Location: [Studio, Urban, Park]
    repeat: 1
"""
        app = CATALOG
    elif scenario == "refuse":
        axes = "\n".join(
            f"      v{n}: [{', '.join(str(i) for i in range(100))}]" for n in range(6)
        )
        spec = (
            "version: 1\nsettings:\n  filename: '{v0}{v1}{v2}{v3}{v4}{v5}{ext}'\n"
            f"jobs:\n  - app: Cartoonify!\n    inputs: {{Style: Ghibli}}\n"
            f"    matrix:\n{axes}\n"
        )
        app = CARTOONIFY
    else:
        raise SystemExit(f"unknown scenario {scenario!r}")
    path = folder / "spec.yaml"
    path.write_text(spec)
    return path, app


def measure(scenario: str, traced: bool) -> dict[str, float | int | str]:
    """Run one scenario in this process and return its figures."""
    with tempfile.TemporaryDirectory() as tmp:
        path, app_data = build(Path(tmp), scenario)
        app = App.from_api(app_data)
        if traced:
            tracemalloc.start()
        started = time.perf_counter()
        spec = load_spec(path)
        loaded = time.perf_counter()
        outcome = ""
        try:
            jobs = plan_jobs(spec, {e.index: app for e in spec.entries})
            outcome = f"{len(jobs):,} jobs"
        except SpecError as exc:
            first = exc.problems[0].message
            outcome = "refused: over max_jobs" if "max_jobs" in first else first[:40]
        done = time.perf_counter()
        peak = tracemalloc.get_traced_memory()[1] if traced else 0
        if traced:
            tracemalloc.stop()
    return {
        "scenario": scenario,
        "outcome": outcome,
        "load_s": loaded - started,
        "plan_s": done - loaded,
        "total_s": done - started,
        "peak_mb": peak / 2**20,
        "maxrss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeat", type=int, default=3, help="timed runs per scenario")
    parser.add_argument("--child", nargs=2, metavar=("SCENARIO", "TRACED"))
    args = parser.parse_args()
    if args.child:
        scenario, traced = args.child
        print(json.dumps(measure(scenario, traced == "1")))
        return

    rows = []
    for scenario in ("urls", "prompts", "refuse"):
        timed = [_child(scenario, traced=False) for _ in range(args.repeat)]
        best = min(timed, key=lambda r: r["total_s"])
        traced = _child(scenario, traced=True)
        best["peak_mb"] = traced["peak_mb"]
        best["maxrss_mb"] = max(r["maxrss_mb"] for r in timed)
        rows.append(best)

    header = (
        f"{'scenario':<9} {'outcome':<22} {'load s':>7} {'plan s':>7} {'total s':>8} "
        f"{'tracemalloc peak MB':>20} {'ru_maxrss MB':>13}"
    )
    print(header)
    print("-" * len(header))
    for r in rows:
        print(
            f"{r['scenario']:<9} {r['outcome']:<22} {r['load_s']:>7.3f} "
            f"{r['plan_s']:>7.3f} {r['total_s']:>8.3f} {r['peak_mb']:>20.1f} "
            f"{r['maxrss_mb']:>13.1f}"
        )
    print(
        f"(best of {args.repeat} untraced runs; peak from one traced run; Python "
        f"{sys.version.split()[0]})"
    )


def _child(scenario: str, *, traced: bool) -> dict:
    out = subprocess.run(
        [sys.executable, __file__, "--child", scenario, "1" if traced else "0"],
        check=True,
        capture_output=True,
        text=True,
    )
    return json.loads(out.stdout)


if __name__ == "__main__":
    main()
