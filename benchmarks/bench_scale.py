"""End-to-end scale figures of the `batchrun` command itself (issue #3).

Run: python benchmarks/bench_scale.py

1. `batchrun plan` of a spec that expands to 100,000 jobs, on `--sandbox`: wall time and
   peak memory (ru_maxrss) of the whole command (start-up, sandbox, app lookup, loading,
   expanding, validating, planning). Target: under 3 s and 300 MB.
2. `batchrun apply` of text jobs against a sandbox in another process, with the same
   concurrency, for batches ten times apart in size: peak memory of the client. Memory
   should grow with the jobs in flight, not with the batch, so the two peaks should be
   close (the plan itself costs a few hundred bytes a job).
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path

PLAN_SPEC = """
version: 1
settings:
  max_jobs: 100000
jobs:
  - app: Cartoonify!
    matrix:
      Upload: {from: uploads.txt}
      Style: [Ghibli, Simpsons, Disney / Pixar, Cyberpunk]
      Aspect Ratio: ["1:1", "4:3", "3:4", "16:9", "9:16"]
"""

APPLY_SPEC = """
version: 1
settings:
  concurrency: 32
  max_jobs: 100000
  filename: "{n}{ext}"
jobs:
  - app: Product Copywriter
    inputs:
      Product: "product number {n}"
    matrix:
      n: {from: numbers.txt}
"""


def child(
    args: list[str], env: dict[str, str] | None = None
) -> tuple[float, float, str]:
    """Run a batchrun command; (wall seconds, its own peak RSS in MB, stderr)."""
    started = time.perf_counter()
    process = subprocess.Popen(
        [sys.executable, "-m", "batchrun", *args],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
        env=env,
    )
    assert process.stderr is not None
    stderr = process.stderr.read()
    # wait4 gives this child's own resource usage, not the maximum over all children.
    _pid, status, usage = os.wait4(process.pid, 0)
    wall = time.perf_counter() - started
    process.returncode = os.waitstatus_to_exitcode(status)
    if process.returncode != 0:
        raise SystemExit(f"batchrun {' '.join(args)} failed:\n{stderr}")
    return wall, usage.ru_maxrss / 1024, stderr


def bench_plan(folder: Path) -> None:
    urls = "\n".join(f"https://cdn.example.com/p/{n:05d}.png" for n in range(5_000))
    (folder / "uploads.txt").write_text(urls + "\n")
    spec = folder / "plan.yaml"
    spec.write_text(PLAN_SPEC)

    wall, peak, _ = child(["plan", str(spec), "--sandbox", "--out", str(folder / "o")])
    print(f"plan 100,000 jobs (--sandbox, whole command): {wall:.2f} s, {peak:.0f} MB")


def bench_apply(folder: Path) -> None:
    sandbox = subprocess.Popen(
        [sys.executable, "-m", "batchrun", "sandbox", "--port", "0",
         "--rate-limit", "1000000", "--queue-seconds", "0",
         "--run-seconds", "0.05,0.1"],
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        text=True,
    )  # fmt: skip
    try:
        env = dict(os.environ)
        assert sandbox.stdout is not None
        for _ in range(2):
            line = sandbox.stdout.readline()
            match = re.match(r"export (\w+)=(\S+)", line)
            if match:
                env[match.group(1)] = match.group(2)
        print("apply, text jobs, concurrency 32, sandbox in another process:")
        for jobs in (300, 3_000):
            numbers = folder / "numbers.txt"
            numbers.write_text("\n".join(str(n) for n in range(jobs)) + "\n")
            spec = folder / f"apply{jobs}.yaml"
            spec.write_text(APPLY_SPEC)
            out = folder / f"out{jobs}"
            wall, peak, _ = child(
                ["apply", str(spec), "--out", str(out), "--results", "wait"], env=env
            )
            print(f"  {jobs:>5} jobs: {wall:6.1f} s, peak RSS {peak:.0f} MB")
    finally:
        sandbox.terminate()
        sandbox.wait(10)


def main() -> None:
    with tempfile.TemporaryDirectory() as temp:
        folder = Path(temp)
        bench_apply(folder)
        bench_plan(folder)


if __name__ == "__main__":
    main()
