"""The dashboard and the alert rules, evaluated by a real Prometheus scraping a real worker.

A worker (`python -m worker run`, fixture `worker_process`) consumes from the real broker while a
producer thread keeps sending comments (and a few malformed records, so that dead letters
flow). A `prometheus` binary scrapes the worker every second, with deploy/prometheus/alerts.yaml
loaded as its rule file. Then, through Prometheus' HTTP API (/api/v1/query):

- every dashboard query (`targets[].expr`, Grafana variables resolved: `$__rate_interval` ->
  RATE_INTERVAL, dashboard variables -> `.*`) must return at least one series;
- every metric selector of every dashboard query, every alert rule and every dashboard variable
  must return at least one series on its own (so `or vector(0)` cannot hide a missing metric);
- every alert condition must be accepted by Prometheus, and its probes must return data. An
  alert condition is normally empty on a healthy worker (`lag > 50000`), so `promql.probes`
  takes it apart: set operators (`and` / `or` / `unless`) split it, comparisons keep their
  non-literal side (`X > 0.01` -> `X`), `absent(X)` becomes `X`;
- every rule loaded into Prometheus evaluates without error (health "ok" in /api/v1/rules);
- the query of the optional KEDA Prometheus trigger (deploy/components/keda-lag-seconds) returns
  data as written (the scrape adds `namespace="moderation"`, as the ServiceMonitor would in the
  overlays' namespace).

Windows: scrapes every 1s and RATE_INTERVAL = 10s, so rate() / histogram_quantile() have data
after a few seconds; the alert rules' own windows ([5m], [10m]) need only two samples. The whole
test takes well under a minute once the broker runs.

Skipped (the only skip) when there is no `prometheus` binary: install the Debian package
`prometheus` (`make tools` does it where apt works).
"""

from __future__ import annotations

import asyncio
import threading
from pathlib import Path
from typing import Any

import orjson
import pytest

from testing.kafka import create_topics
from testing.promql import (
    ALERTS,
    JOB,
    Prometheus,
    PrometheusError,
    Query,
    alert_queries,
    alert_rules,
    contract_series_names,
    dashboard_queries,
    dashboard_variable_selectors,
    keda_queries,
    metric_name,
    metric_selectors,
    probes,
    prometheus_binary,
    resolve_grafana,
)

RATE_INTERVAL = "10s"

pytestmark = [
    pytest.mark.integration,
    pytest.mark.skipif(
        prometheus_binary() is None,
        reason="no `prometheus` binary on PATH: install the Debian package `prometheus` "
        "(apt-get install -y prometheus; `make tools` does it where apt works) to evaluate the "
        "dashboard and alert queries against a live worker",
    ),
]

# Records the worker must dead-letter (reason label in parentheses).
BAD_RECORDS = [
    b"\xff\xfe not utf-8",  # invalid_utf8
    b'{"id": "x", "text": ',  # invalid_json
    b"[1, 2, 3]",  # not_an_object
    orjson.dumps({"id": 7, "text": "id is not a string"}),  # invalid_field
]


class TrickleProducer(threading.Thread):
    """Produces ~100 comments/s (1 in 10 malformed) until stopped, in its own event loop."""

    def __init__(self, bootstrap: str, topic: str) -> None:
        super().__init__(daemon=True, name="trickle-producer")
        self.bootstrap, self.topic = bootstrap, topic
        self.stop_event = threading.Event()
        self.sent = 0
        self.error: BaseException | None = None

    def run(self) -> None:
        try:
            asyncio.run(self._produce())
        except BaseException as exc:  # surfaced by stop()
            self.error = exc

    async def _produce(self) -> None:
        from aiokafka import AIOKafkaProducer

        producer = AIOKafkaProducer(bootstrap_servers=self.bootstrap, linger_ms=5)
        await producer.start()
        try:
            i = 0
            while not self.stop_event.is_set():
                futures = []
                for _ in range(10):
                    if i % 10 == 9:
                        value = BAD_RECORDS[(i // 10) % len(BAD_RECORDS)]
                    else:
                        value = orjson.dumps({"id": f"c-{i}", "text": f"comment number {i}"})
                    futures.append(await producer.send(self.topic, value=value, key=b"%d" % i))
                    i += 1
                await asyncio.gather(*futures)
                self.sent = i
                await asyncio.sleep(0.1)
        finally:
            await producer.stop()

    def stop(self) -> None:
        self.stop_event.set()
        self.join(timeout=30)
        if self.error is not None:
            raise self.error


def _has_data(prometheus: Prometheus, expr: str) -> bool:
    try:
        return bool(prometheus.query(expr))
    except PrometheusError:
        return False


def check_selectors(prometheus: Prometheus, query: Query, expr: str, failures: list[str]) -> None:
    for selector in metric_selectors(expr):
        if prometheus.query(selector):
            continue
        name = metric_name(selector)
        hint = (
            "it is in docs/CONTRACTS.md: a labelled metric is exported only once a label value "
            "was used, the worker should initialise its known label values at start"
            if name in contract_series_names()
            else "the worker does not export it"
        )
        failures.append(f"{query.source}: metric {name} has no series ({selector}): {hint}")


def evaluate_all(prometheus: Prometheus) -> tuple[list[str], int]:
    """Every dashboard and alert query against the live Prometheus; (failures, queries run)."""
    failures: list[str] = []
    count = 0
    for query in dashboard_queries():
        expr = resolve_grafana(query.expr, RATE_INTERVAL)
        count += 1
        try:
            if not prometheus.query(expr):
                failures.append(f"{query.source}: no data for {expr}")
            check_selectors(prometheus, query, expr, failures)
        except PrometheusError as exc:
            failures.append(f"{query.source}: rejected by Prometheus: {exc}")
    for query in dashboard_variable_selectors():
        expr = resolve_grafana(query.expr, RATE_INTERVAL)
        count += 1
        if not prometheus.query(expr):
            failures.append(f"{query.source}: no data for {expr}")
    for query in alert_queries():
        try:
            prometheus.query(query.expr)  # the condition itself: valid, maybe (rightly) empty
            check_selectors(prometheus, query, query.expr, failures)
            for probe in probes(query.expr):
                count += 1
                if not prometheus.query(probe):
                    failures.append(f"{query.source}: no data for {probe!r} (probe of the alert)")
        except PrometheusError as exc:
            failures.append(f"{query.source}: rejected by Prometheus: {exc}")
    for query in keda_queries():
        count += 1
        try:
            if not prometheus.query(query.expr):
                failures.append(f"{query.source}: no data for {query.expr}")
            check_selectors(prometheus, query, query.expr, failures)
        except PrometheusError as exc:
            failures.append(f"{query.source}: rejected by Prometheus: {exc}")
    return failures, count


def test_dashboard_and_alert_queries_return_data_from_a_live_worker(
    kafka_bootstrap: str,
    topics: Any,
    worker_process: Any,
    tmp_path: Path,
    tiny_shadow_model_dir: Path,
) -> None:
    """The worker runs with a shadow model and a policy file, so that the shadow and policy
    panels and the shadow alert have data too."""
    asyncio.run(create_topics(kafka_bootstrap, {f"{topics.output}-shadow": 1}))
    policy = tmp_path / "policy.json"
    policy.write_bytes(
        orjson.dumps(
            {"version": "live", "thresholds": {"toxic": 0.7}, "precision_targets": {"toxic": 0.9}}
        )
    )
    worker = worker_process(
        topics,
        extra_env={
            "MODERATION_SHADOW_MODEL": str(tiny_shadow_model_dir),
            "MODERATION_POLICY_FILE": str(policy),
        },
    )
    producer = TrickleProducer(kafka_bootstrap, topics.input)
    producer.start()
    try:
        with Prometheus(
            tmp_path / "prometheus",
            [f"127.0.0.1:{worker.port}"],
            rule_files=[ALERTS],
            labels={"namespace": "moderation"},
        ) as prometheus:
            prometheus.wait_until(
                lambda: any(t["health"] == "up" for t in prometheus.targets()), 30, "scraping"
            )
            selector = f'job="{JOB}"'
            warm = [  # enough samples in the window for rate() and histogram_quantile()
                f"sum(rate(moderation_messages_scored_total{{{selector}}}[{RATE_INTERVAL}])) > 0",
                f"sum(rate(moderation_messages_dead_lettered_total{{{selector}}}[{RATE_INTERVAL}]))"
                " > 0",
                f"sum(rate(moderation_batch_size_count{{{selector}}}[{RATE_INTERVAL}])) > 0",
                f"count(delta(moderation_consumer_lag{{{selector}}}[{RATE_INTERVAL}])) > 0",
                f"sum(rate(moderation_shadow_scored_total{{{selector}}}[{RATE_INTERVAL}])) > 0",
                f"count(moderation_consumer_lag_seconds{{{selector}}}) > 0",
                # the recording rules over [1h] have been evaluated on two samples
                f"count(moderation:feedback_decisions:increase1h{{{selector}}}) > 0",
            ]
            try:
                prometheus.wait_until(
                    lambda: all(_has_data(prometheus, q) for q in warm), 60, "seeing traffic"
                )
            except TimeoutError as exc:
                missing = [q for q in warm if not _has_data(prometheus, q)]
                raise AssertionError(
                    f"no traffic seen by Prometheus: {missing}\n"
                    f"sent {producer.sent}\nworker log:\n{worker.log()[-3000:]}"
                ) from exc

            failures, count = evaluate_all(prometheus)
            assert not failures, f"{len(failures)} of {count} queries failed:\n" + "\n".join(
                failures
            )

            # the alert and recording rules, loaded by Prometheus, evaluate without error
            names = {rule.get("alert") or rule["record"] for rule in alert_rules()}
            prometheus.wait_until(
                lambda: {r["name"] for r in prometheus.rules() if r["health"] == "ok"} >= names,
                15,
                "evaluating every rule",
            )
            for rule in prometheus.rules():
                assert rule["health"] == "ok" and not rule.get("lastError"), rule

            # and the numbers are plausible: scores flow, the p99 latency is finite
            (scored,) = prometheus.query(
                f"sum(rate(moderation_messages_scored_total{{{selector}}}[{RATE_INTERVAL}]))"
            )
            assert float(scored["value"][1]) > 0
            (p99,) = prometheus.query(
                "histogram_quantile(0.99, sum by (le) (rate("
                f"moderation_end_to_end_latency_seconds_bucket{{{selector}}}[1m])))"
            )
            assert 0 < float(p99["value"][1]) < 60
    finally:
        producer.stop()
