"""Compare two commits of fastws: ``python -m benchmarks.commits A B [--scenario fanout] [--rounds 3]``.

Each commit is checked out in a worktree under ``.benchmarks/commits/`` and
installed (compiled core built) in a virtual environment of its own, once;
then this checkout's load generator (``benchmarks.load``) runs each commit's
server alternately, ``--rounds`` times per scenario, so both see the same
noise, and the median of each figure and the ratio B / A are printed (and the
whole result as JSON on the last line). A and B are anything ``git rev-parse``
takes (``HEAD``, ``main~3``, a tag, a sha). Exits non-zero if any run was
incorrect.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
FIGURES = {
    "fanout": "delivered_per_server_cpu_second",
    "latency": "latency_ms_p99",
    "latency-100": "latency_ms_p99",
    "filtered": "delivered_per_server_cpu_second",
    "tenants": "delivered_per_server_cpu_second",
    "tenants-lockstep": "delivered_per_server_cpu_second",
    "http": "publishes_per_server_cpu_second",
    "idle": "rss_per_connection_kib",
}


def git(*args: str) -> str:
    return subprocess.run(["git", *args], cwd=ROOT, check=True, capture_output=True, text=True).stdout.strip()


def prepare(commit: str) -> tuple[str, Path, Path]:
    """(sha, worktree, its python): checked out and installed once, reused after."""
    sha = git("rev-parse", "--verify", f"{commit}^{{commit}}")
    tree = ROOT / ".benchmarks" / "commits" / sha[:12]
    python = tree / ".venv" / "bin" / "python"
    if not python.exists():
        if not tree.exists():
            git("worktree", "add", "--detach", str(tree), sha)
        subprocess.run([sys.executable, "-m", "venv", str(tree / ".venv")], check=True)
        print(f"installing {commit} ({sha[:12]}) in {tree}", file=sys.stderr, flush=True)
        subprocess.run([str(python), "-m", "pip", "install", "-q", "-e", str(tree)], check=True)
    return sha, tree, python


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("a")
    parser.add_argument("b")
    parser.add_argument("--scenario", action="append", choices=list(FIGURES), help="repeatable; default fanout")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--workers", type=int, default=1)
    args = parser.parse_args()
    scenarios = args.scenario or ["fanout"]
    commits = {name: prepare(name) for name in (args.a, args.b)}
    figures: dict[str, dict[str, list[float]]] = {s: {args.a: [], args.b: []} for s in scenarios}
    correct = True
    for scenario in scenarios:
        for _ in range(args.rounds):
            for name, (_, tree, python) in commits.items():
                run = subprocess.run(
                    [sys.executable, "-m", "benchmarks.load", "--scenario", scenario, "--workers", str(args.workers),
                     "--server-python", str(python), "--server-dir", str(tree)],
                    cwd=ROOT, capture_output=True, text=True, env={**os.environ, "PYTHONPATH": str(ROOT)},
                )
                results = json.loads(run.stdout.strip().splitlines()[-1]) if run.stdout.strip() else []
                if run.returncode != 0 or not results:
                    correct = False
                    print(f"{scenario} {name}: failed\n{run.stderr[-2000:]}", file=sys.stderr)
                    continue
                correct &= all(r["correct"] for r in results)
                figures[scenario][name].append(results[0][FIGURES[scenario]])
    summary = {"a": {"ref": args.a, "sha": commits[args.a][0]}, "b": {"ref": args.b, "sha": commits[args.b][0]},
               "rounds": args.rounds, "scenarios": {}}
    for scenario, by in figures.items():
        medians = {name: statistics.median(values) for name, values in by.items() if values}
        ratio = medians[args.b] / medians[args.a] if len(medians) == 2 and medians[args.a] else None
        summary["scenarios"][scenario] = {"figure": FIGURES[scenario], "a": medians.get(args.a), "b": medians.get(args.b),
                                          "b_over_a": round(ratio, 3) if ratio else None, "runs": by}
        print(f"{scenario} {FIGURES[scenario]}: {args.a}={medians.get(args.a)} {args.b}={medians.get(args.b)}"
              f" b/a={ratio:.3f}" if ratio else f"{scenario}: incomplete")
    summary["correct"] = correct
    print(json.dumps(summary))
    return 0 if correct else 1


if __name__ == "__main__":
    sys.exit(main())
