"""docs/grafana/fastws-dashboard.json asks only for series that GET /metrics serves, and
docs/metrics.md lists every family it serves."""

from __future__ import annotations

import json
import re
from pathlib import Path

from prometheus_client.exposition import generate_latest
from prometheus_client.parser import text_string_to_metric_families

from fastws.control.layout import CLOSE_SLOTS, TenantRow, WorkerStats
from fastws.control.prometheus import HostView, families

DOCS = Path(__file__).resolve().parents[2] / "docs"


def served() -> tuple[set[str], set[str]]:
    """(sample names, family names) of a host with every optional family: Redis, tenants."""

    class Registry:
        def collect(self):
            for broker in ("redis", "shared"):
                row = WorkerStats(state="running", disconnects=[1] * (2 * len(CLOSE_SLOTS) + 2))
                view = HostView({0: row}, [TenantRow("acme", 1, 1, 1)], broker=broker, hosts=2)
                yield from (f for f in families(view) if broker == "redis" or "shared_log" in f.name)

    text = generate_latest(Registry()).decode()  # type: ignore[arg-type]
    samples, names = set(), set()
    for family in text_string_to_metric_families(text):
        names.add(family.name)
        samples |= {sample.name for sample in family.samples}
    return samples, names


def expressions(node) -> list[str]:
    if isinstance(node, dict):
        found = [node["expr"]] if isinstance(node.get("expr"), str) else []
        return found + [e for value in node.values() for e in expressions(value)]
    if isinstance(node, list):
        return [e for value in node for e in expressions(value)]
    return []


def test_the_dashboard_queries_only_served_series():
    dashboard = json.loads((DOCS / "grafana" / "fastws-dashboard.json").read_text())
    samples, _ = served()
    queried = {name for expr in expressions(dashboard) for name in re.findall(r"\bfastws_[a-z0-9_]+", expr)}
    queried |= set(re.findall(r"\bfastws_[a-z0-9_]+", dashboard["templating"]["list"][1]["definition"]))
    assert len(expressions(dashboard)) >= 20
    assert queried <= samples, sorted(queried - samples)
    # the panels do not overlap
    cells = set()
    for panel in dashboard["panels"]:
        grid = panel["gridPos"]
        for x in range(grid["x"], grid["x"] + grid["w"]):
            for y in range(grid["y"], grid["y"] + grid["h"]):
                assert (x, y) not in cells, panel["title"]
                cells.add((x, y))
    assert any("/api/openapi.json" in link["url"] for link in dashboard["links"])


def test_docs_list_every_family():
    text = (DOCS / "metrics.md").read_text()
    _, names = served()
    # counters are documented with their _total suffix, as Prometheus shows them
    shown = set(re.findall(r"`(fastws_[a-z0-9_]+)", text))
    missing = {name for name in names if name not in shown and f"{name}_total" not in shown and f"{name}_info" not in shown}
    assert not missing, sorted(missing)
