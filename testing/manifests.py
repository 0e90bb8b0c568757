"""Build and validate Kubernetes manifests: `kubectl kustomize`, then the built-in kinds against
the Kubernetes schemas (kubernetes-validate, strict) and the custom resources (KEDA, Prometheus
Operator) against the JSON schemas in tests/deploy/crd_schemas/; shared by every test that
builds deploy/ (tests/deploy/test_manifests.py and the tests of single components).
"""

from __future__ import annotations

import json
import shutil
import subprocess
from functools import cache
from pathlib import Path
from typing import Any

import jsonschema
import kubernetes_validate
import yaml
from kubernetes_validate import utils as kv_utils
from referencing import Registry, Resource

REPO = Path(__file__).resolve().parents[1]
DEPLOY = REPO / "deploy"
CRD_SCHEMAS = REPO / "tests" / "deploy" / "crd_schemas"
OLDEST_K8S = "1.31"  # PodDisruptionBudget.unhealthyPodEvictionPolicy is GA since 1.31
K8S_VERSIONS = (OLDEST_K8S, kv_utils.latest_version())
CRD_KINDS = {
    ("keda.sh/v1alpha1", "ScaledObject"): "scaledobject-keda-v1alpha1.json",
    ("keda.sh/v1alpha1", "TriggerAuthentication"): "triggerauthentication-keda-v1alpha1.json",
    ("monitoring.coreos.com/v1", "ServiceMonitor"): "servicemonitor-monitoring-v1.json",
    ("monitoring.coreos.com/v1", "PrometheusRule"): "prometheusrule-monitoring-v1.json",
}


def kubectl() -> str:
    found = shutil.which("kubectl")
    assert found, "kubectl not found on PATH: needed for `kubectl kustomize`"
    return found


def kustomize(directory: Path) -> list[dict[str, Any]]:
    result = subprocess.run(
        [kubectl(), "kustomize", str(directory)], capture_output=True, text=True, timeout=120
    )
    assert result.returncode == 0, f"kubectl kustomize {directory}:\n{result.stderr}"
    return [doc for doc in yaml.safe_load_all(result.stdout) if doc]


def find(resources: list[dict[str, Any]], kind: str, name: str | None = None) -> dict[str, Any]:
    matches = [r for r in resources if r["kind"] == kind and name in (None, r["metadata"]["name"])]
    assert len(matches) == 1, f"expected one {kind} {name or ''}, found {len(matches)}"
    return matches[0]


def container(resources: list[dict[str, Any]]) -> dict[str, Any]:
    pod = find(resources, "Deployment")["spec"]["template"]["spec"]
    return next(c for c in pod["containers"] if c["name"] == "worker")


@cache
def _k8s_definitions() -> Resource:
    # The same definitions kubernetes-validate resolves its own schemas against.
    schema = kv_utils.schema_contents(
        f"kubernetes-json-schema/v{kv_utils.latest_version()}-local-strict/_definitions.json",
        kv_utils.latest_version(),
    )
    return Resource.from_contents(schema)


def validate_crd(resource: dict[str, Any]) -> None:
    schema = json.loads(
        (CRD_SCHEMAS / CRD_KINDS[resource["apiVersion"], resource["kind"]]).read_text()
    )
    registry = Resource.from_contents(schema) @ (_k8s_definitions() @ Registry())
    validator = jsonschema.Draft202012Validator(schema, registry=registry)
    errors = sorted(validator.iter_errors(resource), key=lambda e: list(e.path))
    assert not errors, "\n".join(f"{list(e.path)}: {e.message}" for e in errors)


def validate(resource: dict[str, Any]) -> None:
    key = (resource["apiVersion"], resource["kind"])
    if key in CRD_KINDS:
        validate_crd(resource)
        return
    for version in K8S_VERSIONS:
        try:
            kubernetes_validate.validate(resource, version, strict=True)
        except kubernetes_validate.ValidationError as exc:
            path = ".".join(str(p) for p in exc.path)
            raise AssertionError(f"{key} {resource['metadata'].get('name')} (k8s {version}): "
                                 f"{path}: {exc.message}") from None  # fmt: skip
