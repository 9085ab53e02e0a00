"""Run the core micro benchmarks on both implementations, and the whole-path ones, and print medians and ratios.

    python -m benchmarks.core [extra pytest arguments]

Writes the full pytest-benchmark JSON to .benchmarks/core.json.
"""

from __future__ import annotations

import json
import os
import sys
from collections import defaultdict

import pytest

OUT = os.path.join(".benchmarks", "core.json")


def main() -> int:
    os.makedirs(".benchmarks", exist_ok=True)
    code = pytest.main(
        ["-q", "-p", "no:cacheprovider", "benchmarks/test_core.py", "benchmarks/test_paths.py", "--benchmark-only",
         f"--benchmark-json={OUT}", "--benchmark-columns=median,iqr,rounds", *sys.argv[1:]]
    )
    with open(OUT) as handle:
        results = json.load(handle)["benchmarks"]
    table: dict[str, dict[str, dict]] = defaultdict(dict)
    for bench in results:
        name = bench["name"].split("[")[0].removeprefix("test_")
        params = bench.get("params") or {}
        implementation = params.get("core") or params.get("implementation") or "cython"
        if "shared" in params:  # whole paths run on the compiled core: one row per broker
            name += "_shared" if params["shared"] else "_local"
        if not isinstance(implementation, str):
            implementation = "cython" if "_core_py" not in repr(implementation) else "python"
        table[name][implementation] = bench
    print()
    print("medians per call (per publish for match_mixed)")
    print(f"{'benchmark':34} {'cython median':>14} {'python median':>14} {'ratio':>7}  correct")
    for name, runs in table.items():
        cy, py = runs.get("cython"), runs.get("python")
        if name == "history_memory":
            for impl, bench in runs.items():
                info = bench["extra_info"]
                print(f"{name + ' (' + impl + ')':34} traced {info['traced_bytes']:,} B for {info['encoded_bytes']:,} B"
                      f" encoded ({info['ratio']}x; budget {info['budget_bytes']:,} B)  {info['correct']}")
            continue
        def fmt(bench):
            if not bench:
                return "-"
            per_round = bench["extra_info"].get("publishes_per_round", 1)
            return f"{bench['stats']['median'] * 1e6 / per_round:11.2f} us"
        ratio = f"{py['stats']['median'] / cy['stats']['median']:6.1f}x" if cy and py else "-"
        correct = all(b["extra_info"].get("correct") for b in runs.values())
        print(f"{name:34} {fmt(cy):>14} {fmt(py):>14} {ratio:>7}  {correct}")
    return int(code)


if __name__ == "__main__":
    sys.exit(main())
