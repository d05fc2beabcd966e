"""CPU of one run of the real Claude Code CLI at its cheapest: one turn, an instant answer.

The pinned CLI (tools/node_modules/.bin/claude, `make install`) runs in print mode
against the fake Messages API of tests/fake_anthropic.py, in a fresh git repository
with a private HOME, and answers at once. Its CPU time (user + system, from
getrusage of the children) is the least a real agent run costs, to set beside the
orchestration's CPU per agent run; real sessions take many turns and tools.

    .venv/bin/python benchmarks/claude_cli_cpu.py [--runs 5]
"""

from __future__ import annotations

import argparse
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
CLAUDE = ROOT / "tools" / "node_modules" / ".bin" / "claude"
sys.path.insert(0, str(ROOT / "tests"))

from fake_anthropic import FakeAnthropic, claude_cli_env  # noqa: E402


def children_cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=5)
    args = parser.parse_args()
    if not CLAUDE.exists():
        raise SystemExit(f"the Claude Code CLI is missing at {CLAUDE}: run `make install`")
    cpu, wall = [], []
    with FakeAnthropic() as api, tempfile.TemporaryDirectory(prefix="sdlc-claude-cpu-") as root:
        for n in range(args.runs):
            home, repo = Path(root) / f"home-{n}", Path(root) / f"repo-{n}"
            home.mkdir()
            subprocess.run(["git", "init", "-q", str(repo)], check=True)
            env = {"PATH": os.environ["PATH"], **claude_cli_env(str(home), api.url, timeout_ms=30_000)}
            before, started = children_cpu(), time.perf_counter()
            done = subprocess.run(
                [str(CLAUDE), "-p", "Say hello", "--output-format", "json"],
                cwd=repo, env=env, capture_output=True, text=True, timeout=120,
            )
            if done.returncode != 0:
                raise SystemExit(f"claude exited {done.returncode}: {done.stderr[-2000:]}")
            wall.append(time.perf_counter() - started)
            cpu.append(children_cpu() - before)
    print(f"{args.runs} runs of the Claude Code CLI, one instant turn each: CPU median {statistics.median(cpu):.2f} s "
          f"(min {min(cpu):.2f}, max {max(cpu):.2f}); wall median {statistics.median(wall):.2f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
