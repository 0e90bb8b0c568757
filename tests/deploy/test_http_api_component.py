"""deploy/components/http-api: HTTP-only serving on Kubernetes. Built as an operator would (the
test overlay tests/deploy/overlays/http-api on top of overlays/cpu, and the component listed in
each overlay itself), validated like every other build, and checked for what ties it together:
the Service, the probes, the API key, the HPA on metrics the worker exports, no ScaledObject."""

from __future__ import annotations

import os
import re
import shutil
from pathlib import Path
from typing import Any

import pytest
import yaml
from prometheus_client import generate_latest

from testing.manifests import DEPLOY, container, find, kustomize, validate
from worker.metrics import Metrics

COMPONENT = DEPLOY / "components" / "http-api"
OVERLAYS = ("cpu", "gpu")
TEST_OVERLAY = Path(__file__).resolve().parent / "overlays" / "http-api"


@pytest.fixture(scope="module")
def builds(tmp_path_factory: pytest.TempPathFactory) -> dict[str, list[dict[str, Any]]]:
    """The test overlay, and each overlay of a copy of deploy/ that lists the component."""
    result = {"test-overlay": kustomize(TEST_OVERLAY)}
    copy = tmp_path_factory.mktemp("deploy") / "deploy"
    shutil.copytree(DEPLOY, copy)
    for overlay in OVERLAYS:
        path = copy / "overlays" / overlay / "kustomization.yaml"
        kustomization = yaml.safe_load(path.read_text())
        kustomization["components"] = ["../../components/http-api"]
        path.write_text(yaml.safe_dump(kustomization, sort_keys=False))
        result[overlay] = kustomize(copy / "overlays" / overlay)
    return result


BUILDS = ["test-overlay", *OVERLAYS]


@pytest.mark.parametrize("build", BUILDS)
def test_builds_validate_and_have_no_scaledobject(builds: dict[str, Any], build: str) -> None:
    resources = builds[build]
    for resource in resources:
        validate(resource)
    kinds = [r["kind"] for r in resources]
    assert "ScaledObject" not in kinds and "TriggerAuthentication" not in kinds, kinds
    assert kinds.count("HorizontalPodAutoscaler") == 1
    for resource in resources:
        assert resource["metadata"].get("namespace") == "moderation", resource["kind"]


def worker_settings(resources: list[dict[str, Any]], monkeypatch: pytest.MonkeyPatch) -> Any:
    """The settings a pod of this build starts with (ConfigMap, then a placeholder API key)."""
    from worker.config import load_settings

    data = find(resources, "ConfigMap", "moderation-worker")["data"]
    for key in [k for k in os.environ if k.startswith(("MODERATION_", "KAFKA_"))]:
        monkeypatch.delenv(key)
    for key, value in data.items():
        monkeypatch.setenv(key, value)
    env = {e["name"]: e for e in container(resources)["env"]}
    assert "MODERATION_HTTP_API_KEY" in env
    monkeypatch.setenv("MODERATION_HTTP_API_KEY", "from-the-secret")
    return load_settings()


@pytest.mark.parametrize("build", BUILDS)
def test_pods_serve_http_only_on_the_service_port_with_the_key(
    builds: dict[str, Any], build: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    resources = builds[build]
    settings = worker_settings(resources, monkeypatch)
    assert settings.http_only is True
    assert settings.http_api_bind_host == "0.0.0.0"  # with a key: reachable through the Service
    worker = container(resources)
    ports = {p["name"]: p["containerPort"] for p in worker["ports"]}
    assert ports == {"metrics": settings.metrics_port, "http-api": settings.http_api_port}
    # the key comes from the Secret the template describes, and the pod needs it
    template = yaml.safe_load((COMPONENT / "http-api-key.secret.example.yaml").read_text())
    ref = {e["name"]: e for e in worker["env"]}["MODERATION_HTTP_API_KEY"]["valueFrom"]
    assert ref["secretKeyRef"]["name"] == template["metadata"]["name"]
    assert ref["secretKeyRef"]["key"] in template["stringData"]
    assert ref["secretKeyRef"]["optional"] is False
    # the Service reaches that port on the worker pods
    service = find(resources, "Service", "moderation-worker-http-api")
    pod = find(resources, "Deployment")["spec"]["template"]
    assert all(
        pod["metadata"]["labels"].get(k) == v for k, v in service["spec"]["selector"].items()
    )
    [port] = service["spec"]["ports"]
    assert port["targetPort"] == "http-api"
    # probes stay on the health port: /readyz is 200 once the model is warm and the API listens
    assert worker["readinessProbe"]["httpGet"] == {"path": "/readyz", "port": "metrics"}
    assert worker["livenessProbe"]["httpGet"] == {"path": "/healthz", "port": "metrics"}
    # the pause before SIGTERM, the drain and the exit fit in the grace period
    pause = worker["lifecycle"]["preStop"]["sleep"]["seconds"]
    grace = pod["spec"]["terminationGracePeriodSeconds"]
    assert pause > 0 and pause + settings.shutdown_grace_s + 10 <= grace


def exported_series() -> set[str]:
    """Every series name the worker's /metrics shows from its start (counters with `_total`)."""
    metrics = Metrics()
    metrics.init_http_labels()  # as `worker.app.Worker` does, API on or off
    text = generate_latest(metrics.registry).decode()
    return {line.split("{")[0].split(" ")[0] for line in text.splitlines() if line[:1] != "#"}


@pytest.mark.parametrize("build", BUILDS)
def test_the_hpa_scales_the_deployment_on_metrics_the_worker_exports(
    builds: dict[str, Any], build: str
) -> None:
    resources = builds[build]
    hpa = find(resources, "HorizontalPodAutoscaler")["spec"]
    deployment = find(resources, "Deployment")
    assert hpa["scaleTargetRef"] == {
        "apiVersion": "apps/v1", "kind": "Deployment", "name": deployment["metadata"]["name"]
    }  # fmt: skip
    assert "replicas" not in deployment["spec"], "the HPA owns the replica count"
    assert 2 <= hpa["minReplicas"] <= hpa["maxReplicas"]
    assert hpa["behavior"]["scaleDown"]["stabilizationWindowSeconds"] >= 60
    series = exported_series()
    rules = (COMPONENT / "kustomization.yaml").read_text()  # the adapter rules, documented there
    names = []
    for metric in hpa["metrics"]:
        assert metric["type"] == "Pods"
        name = metric["pods"]["metric"]["name"]
        names.append(name)
        assert float(metric["pods"]["target"]["averageValue"]) > 0
        # the adapter's name: a counter's rate is <name>_per_second (rule: _total -> _per_second)
        source = re.sub(r"_per_second$", "_total", name)
        assert source in series, f"{name}: the worker exports no {source}"
        assert f"seriesQuery: '{source}{{" in rules, f"no adapter rule for {source}"
    assert names == ["moderation_http_requests_per_second", "moderation_http_pending_texts"]
