"""deploy/grafana/corem-ingress.json: every metric its panels query is one the broker exports
(with the suffixes Prometheus gives counters and histograms), and every label it groups or
filters by is one of that metric's labels."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

from corem_ingress import metrics

pytestmark = pytest.mark.unit

DASHBOARD = Path(__file__).resolve().parents[2] / "deploy" / "grafana" / "corem-ingress.json"
_METRIC = re.compile(r"\b(corem_[a-z0-9_]+)")
_BY = re.compile(r"\bby \(([^)]*)\)")
_MATCHER = re.compile(r"([a-z_]+)=~?\"")


def exported() -> dict[str, set[str]]:
    """Sample name -> its label names, for every series /metrics can show (also those with
    no sample yet: a labelled metric before its first observation)."""
    out: dict[str, set[str]] = {}
    registry = metrics.REGISTRY
    for collector, names in registry._collector_to_names.items():
        labels = set(getattr(collector, "_labelnames", ()))
        for name in names:
            out.setdefault(name, set()).update(
                labels | ({"le"} if name.endswith("_bucket") else set())
            )
    for family in registry.collect():  # families built at scrape time (the node collector)
        labels = set(getattr(family, "_labelnames", ()))
        out.setdefault(family.name, set()).update(labels)
        for sample in family.samples:
            out.setdefault(sample.name, set()).update(sample.labels)
    return out


def test_every_queried_metric_and_label_exists() -> None:
    doc = json.loads(DASHBOARD.read_text())
    names = exported()
    exprs = [t["expr"] for p in doc["panels"] for t in p["targets"]]
    assert len(exprs) >= 10
    for expr in exprs:
        found = _METRIC.findall(expr)
        assert found, expr
        for metric in found:
            assert metric in names, f"{metric} (in {expr!r}) is not exported"
            used = {label.strip() for m in _BY.findall(expr) for label in m.split(",")}
            used |= set(_MATCHER.findall(expr))
            used.discard("")
            assert used <= names[metric] | {"le"}, (expr, used - names[metric])
    assert len({p["id"] for p in doc["panels"]}) == len(doc["panels"])
