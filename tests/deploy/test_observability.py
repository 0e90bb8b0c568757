"""Alert rules and Grafana dashboard, offline: promtool, metric names, structure.

The same expressions are evaluated against a real Prometheus scraping a real worker in
test_live_observability.py.
"""

from __future__ import annotations

import json
import re
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml

from testing import promql
from testing.promql import ALERTS, DASHBOARD, JOB
from worker.metrics import Metrics

REPO = Path(__file__).resolve().parents[2]
ALERT_TESTS = ALERTS.parent / "alerts.test.yaml"
README = REPO / "deploy" / "README.md"
REQUIRED_ALERTS = {
    "ModerationWorkerDown",  # worker down
    "ModerationWorkerHighConsumerLag",  # high lag
    "ModerationWorkerLatencySLOBreach",  # p99 over the SLO
    "ModerationWorkerDeadLetterRateHigh",  # dead-letter rate
    "ModerationWorkerStalled",  # no throughput while lag grows
}


# promtool comes with Debian's `prometheus` package (`make tools`); where it cannot be installed
# these tests say so and skip, like the live test.
requires_promtool = pytest.mark.skipif(
    promql.promtool_binary() is None,
    reason="no `promtool` on PATH: install the Debian package `prometheus` (it ships prometheus "
    "and promtool; `make tools` does it where apt works)",
)


def promtool() -> str:
    found = promql.promtool_binary()
    assert found
    return found


def run_promtool(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([promtool(), *args], capture_output=True, text=True, timeout=120)


def dashboard() -> dict[str, Any]:
    return json.loads(DASHBOARD.read_text())


# ----------------------------------------------------------------------------- alert rules


@requires_promtool
def test_promtool_check_rules() -> None:
    result = run_promtool("check", "rules", str(ALERTS))
    assert result.returncode == 0, result.stdout + result.stderr


@requires_promtool
def test_promtool_test_rules() -> None:
    result = run_promtool("test", "rules", str(ALERT_TESTS))
    assert result.returncode == 0, result.stdout + result.stderr
    assert "SUCCESS" in result.stdout + result.stderr


def test_every_alert_is_unit_tested_both_ways() -> None:
    """Each alert has a promtool case where it fires and one where it must stay silent."""
    fires, silent = set(), set()
    for case in yaml.safe_load(ALERT_TESTS.read_text())["tests"]:
        for check in case.get("alert_rule_test", []):
            (fires if check.get("exp_alerts") else silent).add(check["alertname"])
    alerts = {rule["alert"] for rule in promql.alert_rules() if "alert" in rule}
    assert alerts >= REQUIRED_ALERTS
    assert alerts - fires == set(), "alerts never shown to fire"
    assert alerts - silent == set(), "alerts never shown to stay silent"


def test_alerts_are_actionable() -> None:
    anchors = {
        re.sub(r"[^a-z0-9 -]", "", line.lstrip("#").strip().lower()).replace(" ", "-")
        for line in README.read_text().splitlines()
        if line.startswith("#")
    }
    for rule in promql.alert_rules():
        for selector in promql.metric_selectors(rule["expr"]):
            name = rule.get("alert") or rule["record"]
            assert f'job="{JOB}"' in selector, f"{name}: {selector} not scoped to the job"
        if "alert" not in rule:  # a recording rule
            continue
        assert rule["labels"]["severity"] in ("warning", "critical"), rule["alert"]
        assert {"summary", "description", "runbook"} <= set(rule["annotations"]), rule["alert"]
        assert rule.get("for"), f"{rule['alert']}: no `for`, it would fire on a single blip"
        anchor = rule["annotations"]["runbook"].partition("#")[2]
        assert anchor in anchors, f"{rule['alert']}: no section #{anchor} in deploy/README.md"


# ----------------------------------------------------------------------------- both


def all_queries() -> list[promql.Query]:
    return [
        *promql.alert_queries(),
        *promql.dashboard_queries(),
        *promql.dashboard_variable_selectors(),
        *promql.keda_queries(),
    ]


def test_every_metric_read_is_exported_by_the_worker() -> None:
    """Metric names against docs/CONTRACTS.md (the live test checks them against the worker)."""
    exported = promql.contract_series_names() | promql.recorded_names() | {"up"}
    assert "moderation_end_to_end_latency_seconds_bucket" in exported  # the table was parsed
    for query in all_queries():
        for selector in promql.metric_selectors(promql.resolve_grafana(query.expr)):
            name = promql.metric_name(selector)
            assert name in exported, f"{query.source}: {name} is not a metric of the worker"


def registered_series_names() -> set[str]:
    """Series names the worker's own registry (worker/metrics.py) can export, whatever has been
    counted yet: counters `_total`, histograms `_bucket`/`_sum`/`_count`, info `_info`."""
    suffixes = {
        "counter": ("_total",),
        "histogram": ("_bucket", "_sum", "_count"),
        "info": ("_info",),
        "gauge": ("",),
    }
    return {
        family.name + suffix
        for family in Metrics().registry.collect()
        for suffix in suffixes[family.type]
    }


def test_every_metric_read_is_registered_by_the_worker_code() -> None:
    """Metric names against worker/metrics.py itself (the contract table is checked above)."""
    registered = registered_series_names() | promql.recorded_names() | {"up"}
    assert "moderation_comments_by_language_total" in registered  # the registry was read
    for query in all_queries():
        for selector in promql.metric_selectors(promql.resolve_grafana(query.expr)):
            name = promql.metric_name(selector)
            assert name in registered, f"{query.source}: {name} is not registered by the worker"


@requires_promtool
def test_all_promql_parses(tmp_path: Path) -> None:
    """Every dashboard query, resolved as in Grafana, goes through promtool's PromQL parser
    (as the expression of a recording rule)."""
    rules = [
        {"record": f"dashboard:query_{i}", "expr": promql.resolve_grafana(q.expr, "1m")}
        for i, q in enumerate(
            promql.dashboard_queries()
            + promql.dashboard_variable_selectors()
            + promql.keda_queries()
        )
    ]
    path = tmp_path / "dashboard-rules.yaml"
    path.write_text(yaml.safe_dump({"groups": [{"name": "dashboard", "rules": rules}]}))
    result = run_promtool("check", "rules", str(path))
    assert result.returncode == 0, result.stdout + result.stderr


# ----------------------------------------------------------------------------- dashboard


def panels() -> list[dict[str, Any]]:
    return list(promql._walk_panels(dashboard()["panels"]))


def test_dashboard_structure() -> None:
    board = dashboard()
    assert board["uid"] == "moderation-worker" and board["title"]
    ids = [p["id"] for p in panels()]
    assert len(ids) == len(set(ids)), "duplicate panel ids"
    variables = {v["name"]: v for v in board["templating"]["list"]}
    assert variables["datasource"]["type"] == "datasource"
    assert variables["datasource"]["query"] == "prometheus"
    for panel in panels():
        if panel["type"] == "row":
            continue
        assert panel["datasource"]["uid"] == "${datasource}", panel["title"]
        refs = [t["refId"] for t in panel["targets"]]
        assert len(refs) == len(set(refs)), panel["title"]
        for target in panel["targets"]:
            assert target["datasource"]["uid"] == "${datasource}"
    # occupied grid cells do not overlap
    cells: set[tuple[int, int]] = set()
    for panel in panels():
        g = panel["gridPos"]
        assert g["x"] + g["w"] <= 24
        mine = {
            (x, y) for x in range(g["x"], g["x"] + g["w"]) for y in range(g["y"], g["y"] + g["h"])
        }
        assert not cells & mine, f"panel {panel['title']!r} overlaps another"
        cells |= mine


def test_dashboard_template_variables_are_defined_and_only_used_in_regex_matchers() -> None:
    defined = {v["name"] for v in dashboard()["templating"]["list"]}
    for query in promql.dashboard_queries() + promql.dashboard_variable_selectors():
        expr = query.expr
        for name in re.findall(r"\$\{?([a-zA-Z_][a-zA-Z0-9_]*)", expr):
            if name.startswith("__"):
                continue
            assert name in defined, f"{query.source}: ${name} is not a dashboard variable"
        without_regex_matchers = re.sub(r'=~\s*"[^"]*"', "", expr)
        leftover = re.sub(r"\$\{?__[a-z_]+\}?", "", without_regex_matchers)
        assert "$" not in leftover, f"{query.source}: a variable outside a =~ matcher"


def test_dashboard_uses_rate_interval_for_rates() -> None:
    for query in promql.dashboard_queries():
        for window in re.findall(r"\b(?:rate|increase|irate)\([^\[]*\[([^\]]+)\]", query.expr):
            assert window == "$__rate_interval", f"{query.source}: [{window}]"


def test_dashboard_shows_what_the_issue_asks_for() -> None:
    exprs = [q.expr for q in promql.dashboard_queries()]
    text = "\n".join(exprs)

    def has(pattern: str) -> bool:
        return any(re.search(pattern, e) for e in exprs)

    # throughput
    for counter in ("consumed", "scored", "dead_lettered"):
        assert has(rf"rate\(moderation_messages_{counter}_total"), counter
    # end-to-end latency p50/p95/p99 from the histogram
    for quantile in ("0.5", "0.95", "0.99"):
        assert has(
            rf"histogram_quantile\({quantile}, .*moderation_end_to_end_latency_seconds_bucket"
        ), quantile
    # batch size distribution, inference and tokenization time, lag, errors, model info
    heatmaps = [p for p in panels() if p["type"] == "heatmap"]
    assert any("moderation_batch_size_bucket" in t["expr"] for p in heatmaps for t in p["targets"])
    assert "moderation_inference_seconds_bucket" in text
    assert "moderation_tokenization_seconds_bucket" in text
    assert "moderation_consumer_lag" in text
    assert "moderation_errors_total" in text
    assert "moderation_model_info" in text
    # live quality: decisions, precision and recall against the policy's target, calibration gap
    assert has(r"rate\(moderation_feedback_decisions_total")
    for recorded in ("feedback_precision:ratio1h", "feedback_recall:ratio1h",
                     "feedback_calibration_gap:1h"):  # fmt: skip
        assert f"moderation:{recorded}" in text, recorded
    assert "moderation_policy_precision_target" in text


def test_recording_rules_read_only_what_the_worker_exports_or_other_rules_record() -> None:
    """A rule that reads a recorded series reads one recorded before it, in its own group
    (a group's rules are evaluated in order)."""
    registered = registered_series_names()
    for group in yaml.safe_load(ALERTS.read_text())["groups"]:
        recorded: set[str] = set()
        for rule in group["rules"]:
            for selector in promql.metric_selectors(str(rule["expr"])):
                name = promql.metric_name(selector)
                assert name in registered | recorded | {"up"}, (rule.get("record"), name)
            if "record" in rule:
                recorded.add(rule["record"])


def test_dashboard_reads_every_metric_of_the_contract() -> None:
    used = {
        promql.metric_name(s)
        for q in promql.dashboard_queries()
        for s in promql.metric_selectors(promql.resolve_grafana(q.expr))
    }
    families = {re.sub(r"_(bucket|sum|count)$", "", n) for n in used}
    for name in promql.contract_series_names():
        family = re.sub(r"_(bucket|sum|count)$", "", name)
        assert family in families, f"{family} is exported but not on the dashboard"


# ----------------------------------------------------------------------------- the helper


@pytest.mark.parametrize(
    ("expr", "expected"),
    [
        ('up{job="w"} == 0', ['up{job="w"}']),
        ('absent(up{job="w"})', ['up{job="w"}']),
        ("sum(a) / sum(b) > 0.01", ["sum(a) / sum(b)"]),
        ("(sum by (x) (a) > 5)", ["sum by (x) (a)"]),
        (
            "sum by (n) (delta(l[10m])) > 0 unless on (n) sum by (n) (rate(s[10m])) > 0",
            ["sum by (n) (delta(l[10m]))", "sum by (n) (rate(s[10m]))"],
        ),
        ('a{x=">"} > bool 1 and ignoring (y) b < c', ['a{x=">"}', "b", "c"]),
        (
            "histogram_quantile(0.99, sum by (le) (rate(h_bucket[5m]))) > 1",
            ["histogram_quantile(0.99, sum by (le) (rate(h_bucket[5m])))"],
        ),
    ],
)
def test_probes(expr: str, expected: list[str]) -> None:
    assert promql.probes(expr) == expected


def test_metric_selectors() -> None:
    expr = (
        'sum by (le, instance) (rate(a_bucket{job="j", x=~"a|b"}[5m])) / on (instance) '
        "group_left (name) max without (pod) (b_info) + 1e3 * count(up offset 5m)"
    )
    assert promql.metric_selectors(expr) == ['a_bucket{job="j", x=~"a|b"}', "b_info", "up"]


def test_resolve_grafana() -> None:
    expr = 'rate(a{ns=~"$namespace", i=~"${instance}", p=~"[[pod]]"}[$__rate_interval])'
    assert promql.resolve_grafana(expr, "10s") == 'rate(a{ns=~".*", i=~".*", p=~".*"}[10s])'
