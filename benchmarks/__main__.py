"""Every benchmark, one after the other: ``python -m benchmarks`` (about 18 minutes on 2 cores).

Runs, each as its own process so that no run inherits another's state:

1. ``python -m benchmarks.core``: micro benchmarks on both core implementations;
2. ``python -m benchmarks.load --compare --scenario all``: every end-to-end
   scenario against fastws, the reference and the floor;
3. ``python -m benchmarks.fanout --compare-workers``: 1 versus 2 workers;
4. ``python -m benchmarks.defaults``: the default limits under real load;
5. ``python -m benchmarks.slow``: slow consumers against none, in one invocation;
6. ``python -m benchmarks.stopped``: a worker stopped at random moments against none;
7. ``python -m benchmarks.cluster``: the embedded broker against Redis, one host and two
   (needs redis-server and redis-py: the ``redis`` extra).

Exits non-zero if any of them reported an incorrect result.
"""

from __future__ import annotations

import subprocess
import sys

STEPS = [
    ["benchmarks.core"],
    ["benchmarks.load", "--compare", "--scenario", "all"],
    ["benchmarks.fanout", "--compare-workers", "--connections", "1000", "--events", "2000"],
    ["benchmarks.defaults"],
    ["benchmarks.slow"],
    ["benchmarks.stopped"],
    ["benchmarks.cluster"],
]


def main() -> int:
    failed = []
    for step in STEPS:
        print(f"\n=== python -m {' '.join(step)}", flush=True)
        if subprocess.run([sys.executable, "-m", *step]).returncode != 0:
            failed.append(step[0])
    print(f"\nbenchmarks: {len(STEPS) - len(failed)} of {len(STEPS)} correct" + (f"; failed: {failed}" if failed else ""))
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
