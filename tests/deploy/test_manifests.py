"""deploy/: build every kustomization, validate every manifest, check what ties them together.

Built-in kinds are validated with kubernetes-validate (strict: unknown fields are errors) against
the oldest Kubernetes version we support and the newest it ships. The custom resources
(KEDA ScaledObject / TriggerAuthentication, prometheus-operator ServiceMonitor / PrometheusRule)
are validated against the JSON schemas in crd_schemas/ (see crd_schemas/README.md).
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from testing.manifests import (
    DEPLOY,
    container,
    find,
    kustomize,
    validate,
)
from testing.promql import JOB, keda_queries, metric_name, metric_selectors

OVERLAYS = ("cpu", "gpu")
COMPONENTS = ("kafka-sasl-ssl", "custom-model", "threshold-policy", "keda-lag-seconds")


# ----------------------------------------------------------------------------- building


@pytest.fixture(scope="module")
def builds(tmp_path_factory: pytest.TempPathFactory) -> dict[str, list[dict[str, Any]]]:
    """base, each overlay, and each overlay with every component enabled (built from a copy of
    deploy/ whose overlay lists the components, as deploy/README.md tells users to do)."""
    result = {"base": kustomize(DEPLOY / "base")}
    for overlay in OVERLAYS:
        result[overlay] = kustomize(DEPLOY / "overlays" / overlay)
    copy = tmp_path_factory.mktemp("deploy") / "deploy"
    shutil.copytree(DEPLOY, copy)
    for overlay in OVERLAYS:
        path = copy / "overlays" / overlay / "kustomization.yaml"
        kustomization = yaml.safe_load(path.read_text())
        kustomization["components"] = [f"../../components/{c}" for c in COMPONENTS]
        path.write_text(yaml.safe_dump(kustomization, sort_keys=False))
        result[f"{overlay}+components"] = kustomize(copy / "overlays" / overlay)
    return result


def patch_files() -> set[Path]:
    """Files used as patches by a kustomization (partial objects, not manifests), or as the
    content of a generated ConfigMap (e.g. a threshold policy)."""
    patches = set()
    for kustomization in DEPLOY.rglob("kustomization.yaml"):
        spec = yaml.safe_load(kustomization.read_text())
        for patch in spec.get("patches", []):
            if "path" in patch:
                patches.add((kustomization.parent / patch["path"]).resolve())
        for generator in spec.get("configMapGenerator", []):
            for entry in generator.get("files", []):
                patches.add((kustomization.parent / entry.rpartition("=")[2]).resolve())
    return patches


def standalone_manifests() -> Iterator[Path]:
    """Every manifest file under deploy/ except kustomizations, patches and Prometheus files."""
    patches = patch_files()
    for path in sorted(DEPLOY.rglob("*.yaml")):
        if path.name == "kustomization.yaml" or path.resolve() in patches:
            continue
        if DEPLOY / "prometheus" in path.parents:
            continue
        yield path


@pytest.mark.parametrize("build", ["base", *OVERLAYS, *(f"{o}+components" for o in OVERLAYS)])
def test_every_built_resource_validates(builds: dict[str, Any], build: str) -> None:
    kinds = {r["kind"] for r in builds[build]}
    expected = {"Deployment", "ConfigMap", "Service", "ServiceAccount", "PodDisruptionBudget",
                "ScaledObject", "ServiceMonitor", "PrometheusRule"}  # fmt: skip
    assert expected <= kinds, expected - kinds
    for resource in builds[build]:
        validate(resource)


@pytest.mark.parametrize(
    "path", list(standalone_manifests()), ids=lambda p: str(p.relative_to(DEPLOY))
)
def test_every_manifest_file_validates(path: Path) -> None:
    documents = [d for d in yaml.safe_load_all(path.read_text()) if d]
    assert documents, f"{path} holds no manifest"
    for document in documents:
        validate(document)


def test_validation_rejects_mistakes() -> None:
    """The validators are not vacuous: a typo in a built-in and in a custom resource fails."""
    deployment = yaml.safe_load((DEPLOY / "base" / "deployment.yaml").read_text())
    deployment["spec"]["template"]["spec"]["terminationGracePeriod"] = 45
    with pytest.raises(AssertionError):
        validate(deployment)
    scaled = yaml.safe_load((DEPLOY / "base" / "scaledobject.yaml").read_text())
    scaled["spec"]["maxReplicas"] = 3
    with pytest.raises(AssertionError):
        validate(scaled)
    scaled = yaml.safe_load((DEPLOY / "base" / "scaledobject.yaml").read_text())
    scaled["spec"]["triggers"][0]["metadata"]["lagThreshold"] = 2000  # must be a string
    with pytest.raises(AssertionError):
        validate(scaled)


# ----------------------------------------------------------------------------- semantics


def configmap(resources: list[dict[str, Any]]) -> dict[str, str]:
    return find(resources, "ConfigMap", "moderation-worker")["data"]


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_configmap_holds_only_real_settings(builds: dict[str, Any], overlay: str,
                                            monkeypatch: pytest.MonkeyPatch) -> None:  # fmt: skip
    from worker.config import Settings, load_settings

    data = configmap(builds[overlay])
    known = {"KAFKA_BOOTSTRAP_SERVERS"} | {f"MODERATION_{f.upper()}" for f in Settings.model_fields}
    assert set(data) <= known, f"unknown settings (silently ignored): {set(data) - known}"
    for key in [k for k in os.environ if k.startswith("MODERATION_")]:
        monkeypatch.delenv(key)
    for key, value in data.items():
        monkeypatch.setenv(key, value)
    settings = load_settings()  # the values parse
    assert settings.device == ("cpu" if overlay == "cpu" else "cuda")


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_probes_ports_and_grace_period(builds: dict[str, Any], overlay: str) -> None:
    resources = builds[overlay]
    data = configmap(resources)
    worker = container(resources)
    pod = find(resources, "Deployment")["spec"]["template"]["spec"]
    port = int(data.get("MODERATION_METRICS_PORT", "9000"))
    assert {p["name"]: p["containerPort"] for p in worker["ports"]} == {"metrics": port}
    assert worker["livenessProbe"]["httpGet"] == {"path": "/healthz", "port": "metrics"}
    assert worker["readinessProbe"]["httpGet"] == {"path": "/readyz", "port": "metrics"}
    assert worker["startupProbe"]["httpGet"]["path"] == "/healthz"
    grace = float(data.get("MODERATION_SHUTDOWN_GRACE_S", "25"))
    # the drain must finish before the kubelet's SIGKILL, with room for the commit and exit
    assert pod["terminationGracePeriodSeconds"] >= grace + 10
    assert "replicas" not in find(resources, "Deployment")["spec"], "KEDA owns the replica count"
    assert worker["resources"]["requests"]["memory"] and worker["resources"]["limits"]["memory"]


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_security_context(builds: dict[str, Any], overlay: str) -> None:
    pod = find(builds[overlay], "Deployment")["spec"]["template"]["spec"]
    worker = container(builds[overlay])
    assert pod["securityContext"]["runAsNonRoot"] is True
    assert pod["securityContext"]["runAsUser"] != 0
    assert worker["securityContext"]["readOnlyRootFilesystem"] is True
    assert worker["securityContext"]["allowPrivilegeEscalation"] is False
    assert worker["securityContext"]["capabilities"]["drop"] == ["ALL"]
    mounts = {m["mountPath"]: m["name"] for m in worker["volumeMounts"]}
    volumes = {v["name"]: v for v in pod["volumes"]}
    assert "emptyDir" in volumes[mounts["/tmp"]], "a writable /tmp on a read-only root"
    assert pod["automountServiceAccountToken"] is False


def test_gpu_overlay_requests_a_gpu_and_cpu_overlay_does_not(builds: dict[str, Any]) -> None:
    gpu = container(builds["gpu"])["resources"]
    assert gpu["limits"]["nvidia.com/gpu"] == 1
    assert gpu["requests"].get("nvidia.com/gpu", 1) == gpu["limits"]["nvidia.com/gpu"]
    tolerations = find(builds["gpu"], "Deployment")["spec"]["template"]["spec"]["tolerations"]
    assert any(t["key"] == "nvidia.com/gpu" for t in tolerations)
    assert container(builds["gpu"])["image"].endswith("-cuda")
    cpu = container(builds["cpu"])["resources"]
    assert "nvidia.com/gpu" not in {**cpu.get("limits", {}), **cpu.get("requests", {})}
    assert container(builds["cpu"])["image"].endswith("-cpu")
    assert cpu["requests"]["cpu"] == cpu["limits"]["cpu"]
    # threads stay auto (0): chosen from the pod's CPU quota at start (worker/backends/hardware.py)
    assert configmap(builds["cpu"])["MODERATION_INFERENCE_THREADS"] in ("0", "auto")


def labels_match(selector: dict[str, str], labels: dict[str, str]) -> bool:
    return all(labels.get(k) == v for k, v in selector.items())


@pytest.mark.parametrize("build", [*OVERLAYS, *(f"{o}+components" for o in OVERLAYS)])
def test_selectors_tie_together(builds: dict[str, Any], build: str) -> None:
    resources = builds[build]
    deployment = find(resources, "Deployment")
    pod_labels = deployment["spec"]["template"]["metadata"]["labels"]
    assert labels_match(deployment["spec"]["selector"]["matchLabels"], pod_labels)
    pdb = find(resources, "PodDisruptionBudget")
    assert labels_match(pdb["spec"]["selector"]["matchLabels"], pod_labels)
    service = find(resources, "Service", "moderation-worker-metrics")
    assert labels_match(service["spec"]["selector"], pod_labels)
    monitor = find(resources, "ServiceMonitor")
    assert labels_match(monitor["spec"]["selector"]["matchLabels"], service["metadata"]["labels"])
    service_ports = {p["name"] for p in service["spec"]["ports"]}
    assert {e["port"] for e in monitor["spec"]["endpoints"]} <= service_ports
    # Prometheus' job label = the Service's jobLabel label = what the alerts and dashboard select
    assert service["metadata"]["labels"][monitor["spec"]["jobLabel"]] == JOB
    assert {e["path"] for e in monitor["spec"]["endpoints"]} == {"/metrics"}
    assert deployment["spec"]["template"]["spec"]["serviceAccountName"] == find(
        resources, "ServiceAccount")["metadata"]["name"]  # fmt: skip


@pytest.mark.parametrize("build", [*OVERLAYS, *(f"{o}+components" for o in OVERLAYS)])
def test_scaledobject_scales_on_the_workers_lag(builds: dict[str, Any], build: str) -> None:
    resources = builds[build]
    scaled = find(resources, "ScaledObject")
    spec = scaled["spec"]
    assert spec["scaleTargetRef"]["name"] == find(resources, "Deployment")["metadata"]["name"]
    partitions = int(
        scaled["metadata"]["annotations"]["moderation.example.com/input-topic-partitions"]
    )
    assert 1 <= spec["minReplicaCount"] <= spec["maxReplicaCount"] <= partitions, (
        "maxReplicaCount above the partition count: the extra consumers would idle"
    )
    kafka = [t for t in spec["triggers"] if t["type"] == "kafka"]
    assert len(kafka) == 1
    assert len(spec["triggers"]) == (2 if build.endswith("+components") else 1)
    (trigger,) = kafka
    meta = trigger["metadata"]
    data = configmap(resources)
    assert meta["bootstrapServers"] == data["KAFKA_BOOTSTRAP_SERVERS"]
    assert meta["consumerGroup"] == data["MODERATION_GROUP_ID"]
    assert meta["topic"] == data["MODERATION_INPUT_TOPIC"]
    assert meta["offsetResetPolicy"] == data["MODERATION_AUTO_OFFSET_RESET"]
    assert meta["allowIdleConsumers"] == "false"
    assert int(meta["lagThreshold"]) > 0
    behavior = spec["advanced"]["horizontalPodAutoscalerConfig"]["behavior"]
    assert behavior["scaleDown"]["stabilizationWindowSeconds"] >= 60


def test_gpu_scales_to_fewer_replicas_with_a_higher_lag_target(builds: dict[str, Any]) -> None:
    cpu, gpu = (find(builds[o], "ScaledObject")["spec"] for o in OVERLAYS)
    assert gpu["maxReplicaCount"] < cpu["maxReplicaCount"]
    assert int(gpu["triggers"][0]["metadata"]["lagThreshold"]) > int(
        cpu["triggers"][0]["metadata"]["lagThreshold"])  # fmt: skip


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_kafka_sasl_ssl_component(builds: dict[str, Any], overlay: str) -> None:
    resources = builds[f"{overlay}+components"]
    data = configmap(resources)
    assert data["MODERATION_SECURITY_PROTOCOL"] == "SASL_SSL"
    template = yaml.safe_load(
        (
            DEPLOY / "components" / "kafka-sasl-ssl" / "kafka-credentials.secret.example.yaml"
        ).read_text()
    )
    secret_name, secret_keys = template["metadata"]["name"], set(template["stringData"])
    pod = find(resources, "Deployment")["spec"]["template"]["spec"]
    worker = container(resources)
    volume = next(v for v in pod["volumes"] if v.get("secret", {}).get("secretName") == secret_name)
    assert volume["secret"]["optional"] is False, "with SASL the Secret is mandatory"
    mount = next(m for m in worker["volumeMounts"] if m["name"] == volume["name"])
    for setting in ("MODERATION_SASL_PASSWORD_FILE", "MODERATION_SSL_CAFILE"):
        path = Path(data[setting])
        assert path.parent == Path(mount["mountPath"]) and path.name in secret_keys, setting
    username = next(e for e in worker["env"] if e["name"] == "MODERATION_SASL_USERNAME")
    assert username["valueFrom"]["secretKeyRef"]["name"] == secret_name
    assert username["valueFrom"]["secretKeyRef"]["key"] in secret_keys
    # KEDA reads the lag with the same credentials
    auth = find(resources, "TriggerAuthentication")
    assert {r["name"] for r in auth["spec"]["secretTargetRef"]} == {secret_name}
    assert {r["key"] for r in auth["spec"]["secretTargetRef"]} <= secret_keys
    trigger = find(resources, "ScaledObject")["spec"]["triggers"][0]
    assert trigger["authenticationRef"]["name"] == auth["metadata"]["name"]
    keda_sasl = {
        "PLAIN": "plaintext",
        "SCRAM-SHA-256": "scram_sha256",
        "SCRAM-SHA-512": "scram_sha512",
    }
    assert trigger["metadata"]["sasl"] == keda_sasl[data["MODERATION_SASL_MECHANISM"]]
    assert trigger["metadata"]["tls"] == "enable"
    assert auth["metadata"]["namespace"] == find(resources, "ScaledObject")["metadata"]["namespace"]


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_custom_model_component(builds: dict[str, Any], overlay: str) -> None:
    resources = builds[f"{overlay}+components"]
    model = Path(configmap(resources)["MODERATION_MODEL"])
    mounts = {Path(m["mountPath"]): m for m in container(resources)["volumeMounts"]}
    mount = mounts[model.parent]
    assert mount["readOnly"] is True
    assert "MODERATION_MODEL" not in configmap(builds[overlay]), "default: the baked-in model"


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_threshold_policy_component(builds: dict[str, Any], overlay: str) -> None:
    """The policy file is mounted as a directory of the ConfigMap (a subPath mount would never
    see an update), under the name the ConfigMap keeps (no hash suffix: an edit is hot-reloaded,
    not rolled out), and it is a valid policy for the bundled model."""
    from schemas.artifact import read_contract
    from worker.backends.model import DEFAULT_MODEL_DIR
    from worker.policy import parse_policy

    resources = builds[f"{overlay}+components"]
    policy_file = Path(configmap(resources)["MODERATION_POLICY_FILE"])
    mount = {Path(m["mountPath"]): m for m in container(resources)["volumeMounts"]}[
        policy_file.parent
    ]
    assert mount["readOnly"] is True and "subPath" not in mount
    volume = next(
        v for v in find(resources, "Deployment")["spec"]["template"]["spec"]["volumes"]
        if v["name"] == mount["name"]
    )  # fmt: skip
    policy_map = find(resources, "ConfigMap", volume["configMap"]["name"])
    assert policy_map["metadata"]["name"] == "moderation-policy"
    labels = read_contract(DEFAULT_MODEL_DIR).labels
    policy = parse_policy(policy_map["data"][policy_file.name].encode(), policy_file.name, labels)
    assert policy.version and policy.tenants
    assert "MODERATION_POLICY_FILE" not in configmap(builds[overlay]), "default: model thresholds"


def test_every_resource_is_namespaced_by_the_overlays(builds: dict[str, Any]) -> None:
    for overlay in OVERLAYS:
        for resource in builds[overlay]:
            assert resource["metadata"].get("namespace") == "moderation", resource["kind"]


def test_prometheusrule_matches_alerts_file() -> None:
    rule = yaml.safe_load((DEPLOY / "base" / "prometheusrule.yaml").read_text())
    alerts = yaml.safe_load((DEPLOY / "prometheus" / "alerts.yaml").read_text())
    assert rule["spec"]["groups"] == alerts["groups"], (
        "deploy/base/prometheusrule.yaml is stale: "
        "run python deploy/prometheus/render_prometheusrule.py"
    )


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_keda_lag_seconds_component(builds: dict[str, Any], overlay: str) -> None:
    """The optional Prometheus trigger reads the worker's lag in seconds, in the namespace the
    overlay deploys to, with a positive target compared as a plain value."""
    scaled = find(builds[f"{overlay}+components"], "ScaledObject")
    (trigger,) = [t for t in scaled["spec"]["triggers"] if t["type"] == "prometheus"]
    assert trigger["metricType"] == "Value"
    meta = trigger["metadata"]
    assert meta["serverAddress"].startswith("http")
    assert float(meta["threshold"]) > float(meta["activationThreshold"]) > 0
    selectors = metric_selectors(meta["query"])
    assert [metric_name(s) for s in selectors] == ["moderation_consumer_lag_seconds"]
    assert f'job="{JOB}"' in selectors[0]
    assert f'namespace="{scaled["metadata"]["namespace"]}"' in selectors[0]
    assert [q.expr for q in keda_queries()] == [meta["query"]]  # what the live test evaluates
    default = find(builds[overlay], "ScaledObject")["spec"]["triggers"]
    assert [t["type"] for t in default] == ["kafka"], "optional: not in the overlays by default"
