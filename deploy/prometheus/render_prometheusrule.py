"""Render deploy/base/prometheusrule.yaml (a Prometheus-Operator PrometheusRule) from alerts.yaml.

alerts.yaml is the source of truth (promtool checks and unit-tests it); run this after editing it:

    python deploy/prometheus/render_prometheusrule.py

tests/deploy checks that both files hold the same rule groups.
"""

from __future__ import annotations

from pathlib import Path

HERE = Path(__file__).resolve().parent
SOURCE = HERE / "alerts.yaml"
TARGET = HERE.parent / "base" / "prometheusrule.yaml"

HEADER = """\
# GENERATED from deploy/prometheus/alerts.yaml by deploy/prometheus/render_prometheusrule.py.
# Do not edit by hand. Your Prometheus' ruleSelector may need an extra label here (for
# kube-prometheus-stack: `release: <helm release name>`); add it with a kustomize patch.
apiVersion: monitoring.coreos.com/v1
kind: PrometheusRule
metadata:
  name: moderation-worker
spec:
"""


def render() -> str:
    lines = SOURCE.read_text().splitlines()
    start = next(i for i, line in enumerate(lines) if line.startswith("groups:"))
    body = "\n".join(("  " + line) if line.strip() else "" for line in lines[start:])
    return HEADER + body + "\n"


if __name__ == "__main__":
    TARGET.write_text(render())
    print(f"wrote {TARGET}")
