"""PromQL of the dashboard and the alert rules, and a real Prometheus to evaluate it against.

Used by the offline tests in tests/deploy (syntax, metric names) and by
tests/deploy/test_live_observability.py.

- `dashboard_queries` / `alert_queries`: every PromQL expression with where it comes from.
- `resolve_grafana`: Grafana template variables -> plain PromQL (`$__rate_interval` -> a window,
  dashboard variables such as `$namespace` -> `.*`, i.e. match everything; they are only used
  inside `=~` matchers).
- `probes`: the sub-expressions of an alert condition that must return data while everything is
  healthy. An alert condition is usually empty then (`lag > 50000`), which proves nothing, so the
  top-level structure is taken apart: set operators (`and`, `or`, `unless`) split the condition in
  its operands, a comparison keeps its non-literal side(s) (`X > 0.01` -> `X`), `absent(X)` is
  evaluated as `X`. Each probe must return at least one series; the unmodified condition must
  still be accepted by Prometheus (no error).
- `metric_selectors`: the metric names a query reads, to check them against docs/CONTRACTS.md and
  one by one against the live Prometheus.
- `Prometheus`: runs the `prometheus` binary on a free loopback port with a generated config.
"""

from __future__ import annotations

import contextlib
import json
import re
import shutil
import subprocess
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from testing.ports import free_port
from testing.processes import stop_process
from testing.wait import wait_until

REPO = Path(__file__).resolve().parents[1]
DASHBOARD = REPO / "deploy" / "grafana" / "moderation-worker.json"
ALERTS = REPO / "deploy" / "prometheus" / "alerts.yaml"
KEDA_LAG_SECONDS = REPO / "deploy" / "components" / "keda-lag-seconds" / "scaledobject-patch.yaml"
CONTRACTS = REPO / "docs" / "CONTRACTS.md"
JOB = "moderation-worker"
_QUOTES = "\"'`"  # PromQL's string delimiters


@dataclass(frozen=True)
class Query:
    source: str  # human-readable origin, e.g. "panel 'Messages / s' target B"
    expr: str


# ----------------------------------------------------------------------------- extraction


def _walk_panels(panels: list[dict[str, Any]]) -> Iterator[dict[str, Any]]:
    for panel in panels:
        yield panel
        yield from _walk_panels(panel.get("panels", []))  # collapsed rows nest their panels


def dashboard_queries(path: Path = DASHBOARD) -> list[Query]:
    """Every `targets[].expr` of every panel (rows included), raw (template variables kept)."""
    dashboard = json.loads(path.read_text())
    queries = []
    for panel in _walk_panels(dashboard.get("panels", [])):
        for target in panel.get("targets", []):
            if target.get("expr"):
                source = f"panel {panel.get('title')!r} target {target.get('refId')}"
                queries.append(Query(source, target["expr"]))
    return queries


def dashboard_variable_selectors(path: Path = DASHBOARD) -> list[Query]:
    """The series selector inside each `label_values(<selector>, label)` variable query."""
    dashboard = json.loads(path.read_text())
    queries = []
    for variable in dashboard.get("templating", {}).get("list", []):
        if variable.get("type") != "query":
            continue
        query = variable.get("query")
        text = query.get("query", "") if isinstance(query, dict) else str(query or "")
        match = re.fullmatch(r"\s*label_values\((.*),\s*[a-zA-Z_][a-zA-Z0-9_]*\s*\)\s*", text)
        if match:
            queries.append(Query(f"variable ${variable['name']}", match.group(1)))
    return queries


def alert_rules(path: Path = ALERTS) -> list[dict[str, Any]]:
    return [rule for group in yaml.safe_load(path.read_text())["groups"] for rule in group["rules"]]


def alert_queries(path: Path = ALERTS) -> list[Query]:
    return [
        Query(f"alert {rule.get('alert') or rule.get('record')}", str(rule["expr"]).strip())
        for rule in alert_rules(path)
    ]


def recorded_names(path: Path = ALERTS) -> set[str]:
    """Series names the rule file's recording rules produce (`level:metric:operations`)."""
    return {str(rule["record"]) for rule in alert_rules(path) if "record" in rule}


def keda_queries(path: Path = KEDA_LAG_SECONDS) -> list[Query]:
    """The query of every KEDA Prometheus trigger the component's JSON patch adds."""
    return [
        Query(f"KEDA trigger {op['value'].get('name')}", op["value"]["metadata"]["query"])
        for op in yaml.safe_load(path.read_text())
        if op["op"] == "add" and op["value"].get("type") == "prometheus"
    ]


_GRAFANA_BUILTINS = ("__rate_interval", "__interval", "__range")


def resolve_grafana(expr: str, rate_interval: str = "1m") -> str:
    """Grafana template variables -> PromQL that Prometheus accepts as is."""
    for name in _GRAFANA_BUILTINS:
        expr = expr.replace("${" + name + "}", rate_interval).replace("$" + name, rate_interval)
    # ${var}, ${var:format}, [[var]], $var: dashboard variables, used in =~ matchers only.
    expr = re.sub(r"\$\{[a-zA-Z_][a-zA-Z0-9_]*(:[a-z]+)?\}", ".*", expr)
    expr = re.sub(r"\[\[[a-zA-Z_][a-zA-Z0-9_]*\]\]", ".*", expr)
    expr = re.sub(r"\$[a-zA-Z_][a-zA-Z0-9_]*", ".*", expr)
    return expr


# ----------------------------------------------------------------------------- a small lexer


def _string_end(expr: str, index: int) -> int:
    """Just after the string literal that opens at `expr[index]` (backslash escapes skipped)."""
    quote, i = expr[index], index + 1
    while i < len(expr):
        if expr[i] == "\\":
            i += 2
        elif expr[i] == quote:
            return i + 1
        else:
            i += 1
    return len(expr)


def _top_level_spans(expr: str) -> list[tuple[int, int]]:
    """Spans of `expr` that are at nesting depth 0 and outside string literals."""
    spans, depth, start, i = [], 0, 0, 0
    while i < len(expr):
        char = expr[i]
        if char in _QUOTES:
            if depth == 0 and start < i:
                spans.append((start, i))
            i = _string_end(expr, i)
            if depth == 0:
                start = i
            continue
        if char in "({[":
            if depth == 0 and start < i:
                spans.append((start, i))
            depth += 1
        elif char in ")}]":
            depth -= 1
            if depth == 0:
                start = i + 1
        i += 1
    if depth == 0 and start < len(expr):
        spans.append((start, len(expr)))
    return spans


_SET_OP = re.compile(r"\b(and|or|unless)\b", re.IGNORECASE)
_CMP_OP = re.compile(r"==|!=|>=|<=|>|<")
_MODIFIER = re.compile(
    r"^\s*(bool\b)?\s*((on|ignoring)\s*\([^)]*\))?\s*((group_left|group_right)\s*(\([^)]*\))?)?",
    re.IGNORECASE,
)
_NUMBER = re.compile(r"[+-]?(\d+(\.\d*)?|\.\d+)([eE][+-]?\d+)?|[+-]?(inf|nan)", re.IGNORECASE)


def _split_top_level(expr: str, operator: re.Pattern[str]) -> list[str]:
    """Split at every match of `operator` at depth 0; vector-matching modifiers (on(...),
    ignoring(...), group_left/right, bool) that follow an operator are dropped."""
    cuts = []
    for start, end in _top_level_spans(expr):
        for match in operator.finditer(expr, start, end):
            cuts.append((match.start(), match.end()))
    if not cuts:
        return [expr.strip()]
    parts, previous = [], 0
    for op_start, op_end in cuts:
        parts.append(expr[previous:op_start])
        previous = op_end
    parts.append(expr[previous:])
    cleaned = [parts[0]] + [_MODIFIER.sub("", part, count=1) for part in parts[1:]]
    return [part.strip() for part in cleaned]


def _strip_parens(expr: str) -> str:
    expr = expr.strip()
    while expr.startswith("(") and expr.endswith(")") and _top_level_spans(expr) == []:
        expr = expr[1:-1].strip()
    return expr


def _unwrap_absent(expr: str) -> str:
    match = re.fullmatch(r"(absent|absent_over_time)\s*\((.*)\)", expr.strip(), re.DOTALL)
    if match and _top_level_spans(expr.strip()) == [(0, len(match.group(1)))]:
        return match.group(2).strip()
    return expr


def probes(expr: str) -> list[str]:
    """Sub-expressions of an alert condition that must return data when everything is healthy."""
    result: list[str] = []
    for operand in _split_top_level(_strip_parens(expr), _SET_OP):
        for side in _split_top_level(_strip_parens(operand), _CMP_OP):
            side = _unwrap_absent(_strip_parens(side))
            if side and not _NUMBER.fullmatch(side):
                result.append(side)
    return result


_KEYWORDS = {
    "and", "or", "unless", "by", "without", "on", "ignoring", "group_left", "group_right",
    "bool", "offset", "inf", "nan",
}  # fmt: skip
_IDENT = re.compile(r"[a-zA-Z_:][a-zA-Z0-9_:]*")
_AGGREGATION_CLAUSE = re.compile(r"(by|without)\s*\(", re.IGNORECASE)


def metric_selectors(expr: str) -> list[str]:
    """Metric selectors (`name{matchers}` or bare `name`) read by `expr`, in order."""
    selectors: list[str] = []
    i, depth_braces, quote = 0, 0, ""
    grouping_paren = False  # inside by (...), on (...), ...: label names, not metrics
    while i < len(expr):
        char = expr[i]
        if quote:
            if char == "\\":
                i += 2
                continue
            if char == quote:
                quote = ""
            i += 1
            continue
        if char in "\"'`":
            quote = char
        elif char == "{":
            depth_braces += 1
        elif char == "}":
            depth_braces -= 1
        elif char == ")" and grouping_paren:
            grouping_paren = False
        elif char == "[":  # range or subquery duration
            i = expr.index("]", i) + 1
            continue
        elif depth_braces == 0 and not grouping_paren and (match := _IDENT.match(expr, i)):
            word = match.group(0)
            end = match.end()
            rest = expr[end:].lstrip()
            previous = expr[:i].rstrip()
            is_number_part = bool(previous) and (previous[-1].isdigit() or previous[-1] == ".")
            if word.lower() in ("by", "without", "on", "ignoring", "group_left", "group_right"):
                if rest.startswith("("):
                    grouping_paren = True
                    i = expr.index("(", end) + 1
                    continue
            elif (
                word.lower() in _KEYWORDS
                or rest.startswith("(")
                or _AGGREGATION_CLAUSE.match(rest)  # sum by (...) (...)
                or is_number_part
            ):
                pass
            else:
                if rest.startswith("{"):
                    close = _matching_brace(expr, expr.index("{", end))
                    selectors.append(expr[i : close + 1])
                    i = close + 1
                    continue
                selectors.append(word)
            i = end
            continue
        i += 1
    return selectors


def _matching_brace(expr: str, open_index: int) -> int:
    i = open_index + 1
    while i < len(expr):
        if expr[i] in _QUOTES:
            i = _string_end(expr, i)
        elif expr[i] == "}":
            return i
        else:
            i += 1
    raise ValueError(f"unbalanced braces in {expr!r}")


def metric_name(selector: str) -> str:
    return _IDENT.match(selector).group(0)  # type: ignore[union-attr]


def contract_series_names(path: Path = CONTRACTS) -> set[str]:
    """Series names the worker exports per docs/CONTRACTS.md (histograms: _bucket/_sum/_count)."""
    names = set()
    for line in path.read_text().splitlines():
        match = re.match(r"\|\s*`(moderation_[a-z0-9_]+)`\s*\|\s*([a-z]+)", line)
        if not match:
            continue
        name, kind = match.groups()
        if kind == "histogram":
            names |= {f"{name}_bucket", f"{name}_sum", f"{name}_count"}
        else:
            names.add(name)
    return names


# ----------------------------------------------------------------------------- Prometheus


def prometheus_binary() -> str | None:
    return shutil.which("prometheus")


def promtool_binary() -> str | None:
    return shutil.which("promtool")


class PrometheusError(RuntimeError):
    pass


class Prometheus:
    """A real Prometheus server scraping `targets` (host:port) as job "moderation-worker"."""

    def __init__(
        self,
        workdir: Path,
        targets: list[str],
        scrape_interval: str = "1s",
        rule_files: list[Path] | None = None,
        binary: str | None = None,
        labels: dict[str, str] | None = None,
    ) -> None:
        self.binary = binary or prometheus_binary()
        if not self.binary:
            raise PrometheusError("no prometheus binary on PATH")
        self.workdir = workdir
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.config = {
            "global": {"scrape_interval": scrape_interval, "evaluation_interval": scrape_interval,
                       "scrape_timeout": scrape_interval},
            "rule_files": [str(p) for p in rule_files or []],
            "scrape_configs": [{"job_name": JOB, "metrics_path": "/metrics",
                                "static_configs": [{"targets": targets,
                                                    "labels": labels or {}}]}],
        }  # fmt: skip
        self.proc: subprocess.Popen[bytes] | None = None
        self.log_path = workdir / "prometheus.log"

    def __enter__(self) -> Prometheus:
        self.workdir.mkdir(parents=True, exist_ok=True)
        config_path = self.workdir / "prometheus.yml"
        config_path.write_text(yaml.safe_dump(self.config, sort_keys=False))
        with self.log_path.open("wb") as log:
            self.proc = subprocess.Popen(
                [self.binary, f"--config.file={config_path}",
                 f"--storage.tsdb.path={self.workdir / 'data'}",
                 f"--web.listen-address=127.0.0.1:{self.port}",
                 "--storage.tsdb.retention.time=1h", "--log.level=warn"],
                stdout=log, stderr=subprocess.STDOUT, cwd=self.workdir,
            )  # fmt: skip
        try:
            self._wait(lambda: self._get("/-/ready", raw=True) is not None, 30, "ready")
        except BaseException:
            self.__exit__()
            raise
        return self

    def __exit__(self, *_: object) -> None:
        if self.proc:
            stop_process(self.proc, 15)

    def log(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def _get(self, path: str, raw: bool = False) -> Any:
        if self.proc and self.proc.poll() is not None:
            raise PrometheusError(f"prometheus exited with {self.proc.returncode}:\n{self.log()}")
        try:
            with urllib.request.urlopen(self.url + path, timeout=10) as response:
                body = response.read().decode()
        except urllib.error.HTTPError as exc:
            body = exc.read().decode()
            if raw:
                return None
            payload = json.loads(body)
            error = f"{path}: {payload.get('errorType')}: {payload.get('error')}"
            raise PrometheusError(error) from None
        except OSError:
            if raw:
                return None
            raise
        return body if raw else json.loads(body)

    def _wait(self, predicate: Callable[[], object], timeout: float, what: str) -> None:
        def holds() -> object:
            with contextlib.suppress(OSError):
                return predicate()
            return False

        wait_until(
            holds, timeout, interval=0.5, message=lambda: f"prometheus: not {what}:\n{self.log()}"
        )

    def query(self, expr: str) -> list[dict[str, Any]]:
        """Instant query at now; the result vector (raises PrometheusError on a bad query)."""
        payload = self._get("/api/v1/query?" + urllib.parse.urlencode({"query": expr}))
        if payload["status"] != "success":
            raise PrometheusError(f"{expr}: {payload}")
        data = payload["data"]
        if data["resultType"] == "scalar":
            return [{"metric": {}, "value": data["result"]}]
        return data["result"]

    def targets(self) -> list[dict[str, Any]]:
        return self._get("/api/v1/targets")["data"]["activeTargets"]

    def rules(self) -> list[dict[str, Any]]:
        groups = self._get("/api/v1/rules")["data"]["groups"]
        return [rule for group in groups for rule in group["rules"]]

    def wait_until(self, predicate: Callable[[], object], timeout: float, what: str) -> None:
        self._wait(predicate, timeout, what)
