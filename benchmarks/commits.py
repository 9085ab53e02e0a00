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
DELIVERED = ("delivered_per_server_cpu_second",)
LATENCY = ("latency_ms_p50", "latency_ms_p99", "delivered_per_server_cpu_second")
FIGURES = {
    "fanout": DELIVERED,
    "latency": LATENCY,
    "latency-100": LATENCY,
    "filtered": DELIVERED,
    "tenants": DELIVERED,
    "tenants-lockstep": DELIVERED,
    "http": ("publishes_per_server_cpu_second",),
    "idle": ("rss_per_connection_kib", "server_cpu_us_per_connection", "rss_kept_after_closing_kib_per_connection",
             "second_cycle_growth_kib_per_connection"),
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
    figures: dict[tuple[str, str], dict[str, list[float]]] = {
        (s, f): {args.a: [], args.b: []} for s in scenarios for f in FIGURES[s]
    }
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
                for figure in FIGURES[scenario]:
                    figures[scenario, figure][name].append(results[0][figure])
    summary = {"a": {"ref": args.a, "sha": commits[args.a][0]}, "b": {"ref": args.b, "sha": commits[args.b][0]},
               "rounds": args.rounds, "scenarios": {}}
    for (scenario, figure), by in figures.items():
        medians = {name: statistics.median(values) for name, values in by.items() if values}
        # a ratio only between positive figures (a growth near 0 has none worth printing)
        ratio = medians[args.b] / medians[args.a] if len(medians) == 2 and medians[args.a] > 0 else None
        summary["scenarios"].setdefault(scenario, {})[figure] = {
            "a": medians.get(args.a), "b": medians.get(args.b), "b_over_a": round(ratio, 3) if ratio else None, "runs": by,
        }
        line = f"{scenario} {figure}: {args.a}={medians.get(args.a)} {args.b}={medians.get(args.b)}"
        print(line + (f" b/a={ratio:.3f}" if ratio else "") if len(medians) == 2 else f"{scenario} {figure}: incomplete")
    summary["correct"] = correct
    print(json.dumps(summary))
    return 0 if correct else 1


if __name__ == "__main__":
    sys.exit(main())
