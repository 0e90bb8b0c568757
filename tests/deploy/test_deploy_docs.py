"""deploy/README.md against the built overlays, and the components a real cluster needs
(issue 25, point 7): each built in a user overlay on top of overlays/cpu, validated against the
Kubernetes schemas (and the CRD schemas where KEDA / the Prometheus Operator are involved)."""

from __future__ import annotations

import re
import shutil
import tomllib
from pathlib import Path
from typing import Any

import pytest
import yaml

from testing.manifests import DEPLOY, REPO, container, find, kustomize, validate

README = DEPLOY / "README.md"
OPERATOR_GROUPS = ("keda.sh/", "monitoring.coreos.com/")


def settings_default(variable: str) -> str:
    from worker.config import Settings, env_names

    return str(Settings.model_fields[env_names()[variable]].default)


def overlay_table(text: str) -> dict[str, dict[str, str]]:
    """The README's overlay table: row label -> {"cpu": cell, "gpu": cell}."""
    lines = text.splitlines()
    start = lines.index("| | cpu overlay | gpu overlay |")
    rows: dict[str, dict[str, str]] = {}
    for line in lines[start + 2 :]:
        if not line.startswith("|"):
            break
        cells = [c.strip() for c in line.strip("|").split("|")]
        rows[cells[0]] = {"cpu": cells[1], "gpu": cells[2]}
    return rows


def first_code(cell: str) -> str:
    match = re.search(r"`([^`]+)`", cell)
    assert match, cell
    return match.group(1)


def first_number(cell: str) -> int:
    match = re.search(r"\d[\d ]*", cell)
    assert match, cell
    return int(match.group(0).replace(" ", ""))


def gib(quantity: str) -> float:
    match = re.fullmatch(r"(\d+(?:\.\d+)?)(Mi|Gi)", quantity)
    assert match, quantity
    return float(match.group(1)) / (1024 if match.group(2) == "Mi" else 1)


def documented_mismatches(readme: str, builds: dict[str, list[dict[str, Any]]]) -> list[str]:
    """Every value of the README's overlay table that the built overlay does not have."""
    problems: list[str] = []
    rows = overlay_table(readme)

    def expect(what: str, documented: object, built: object) -> None:
        if str(documented) != str(built):
            problems.append(f"{what}: README says {documented!r}, the overlay builds {built!r}")

    for overlay in ("cpu", "gpu"):
        resources = builds[overlay]
        data = find(resources, "ConfigMap", "moderation-worker")["data"]

        def setting(variable: str, data: dict[str, str] = data) -> str:
            return data.get(variable, settings_default(variable))

        for label, cell in ((k, v[overlay]) for k, v in rows.items()):
            where = f"{overlay} overlay, {label}"
            if label == "image tag":
                image = container(resources)["image"]
                expect(where, first_code(cell), "-" + image.rpartition("-")[2])
            elif label == "`MODERATION_DEVICE`":
                expect(where, first_code(cell), setting("MODERATION_DEVICE"))
            elif "MODERATION_INFERENCE_THREADS" in label:
                expect(where, first_code(cell), setting("MODERATION_INFERENCE_THREADS"))
            elif "MODERATION_MAX_BATCH_SIZE" in label:
                expect(where, first_number(cell), setting("MODERATION_MAX_BATCH_SIZE"))
            elif "MODERATION_TOKEN_BUDGET" in label:
                expect(where, first_number(cell), setting("MODERATION_TOKEN_BUDGET"))
            elif "MODERATION_PRECISION" in label:
                built = data.get("MODERATION_PRECISION", "not set")
                documented = "not set" if cell.startswith("not set") else first_code(cell)
                expect(where, documented, built)
            elif label == "resources":
                resources_ = container(resources)["resources"]
                expect(where + " (cpu request)", first_number(cell), resources_["requests"]["cpu"])
                sizes = [float(s) for s in re.findall(r"(\d+(?:\.\d+)?) GiB", cell)]
                expect(where + " (memory request)", sizes[0], gib(resources_["requests"]["memory"]))
                expect(where + " (memory limit)", sizes[-1], gib(resources_["limits"]["memory"]))
                gpus = resources_["limits"].get("nvidia.com/gpu")
                expect(where + " (GPU)", "nvidia.com/gpu: 1" in cell, gpus == 1)
            elif label.startswith("replicas"):
                scaled = find(resources, "ScaledObject")["spec"]
                low, high = map(int, re.match(r"(\d+)-(\d+)", cell).groups())  # type: ignore[union-attr]
                expect(where + " (min)", low, scaled["minReplicaCount"])
                expect(where + " (max)", high, scaled["maxReplicaCount"])
                lag = re.search(r"(\d+) messages of lag", cell)
                assert lag, cell
                expect(
                    where + " (lag)",
                    lag.group(1),
                    scaled["triggers"][0]["metadata"]["lagThreshold"],
                )
            else:
                problems.append(f"README row {label!r} is not checked here: add it")
    patch = yaml.safe_load((DEPLOY / "overlays" / "cpu" / "configmap-patch.yaml").read_text())
    claim = re.search(r"The cpu overlay's ConfigMap patch sets only `(\w+): \"(\w+)\"`", readme)
    if claim is None or patch["data"] != {claim.group(1): claim.group(2)}:
        problems.append(f"the cpu overlay's ConfigMap patch is {patch['data']}, README: {claim}")
    return problems


@pytest.fixture(scope="module")
def overlays() -> dict[str, list[dict[str, Any]]]:
    return {o: kustomize(DEPLOY / "overlays" / o) for o in ("cpu", "gpu")}


def test_readme_overlay_table_matches_the_built_overlays(overlays: dict[str, Any]) -> None:
    problems = documented_mismatches(README.read_text(), overlays)
    assert not problems, "\n".join(problems)


def test_the_drift_check_catches_the_old_readme(overlays: dict[str, Any]) -> None:
    """The table as it was before issue 25 (threads 2, batch 32 for the cpu overlay) fails."""
    text = README.read_text()
    rows = overlay_table(text)
    threads = next(k for k in rows if "MODERATION_INFERENCE_THREADS" in k)
    batch = next(k for k in rows if "MODERATION_MAX_BATCH_SIZE" in k)
    old = text.replace(f"| {threads} | {rows[threads]['cpu']} |", f"| {threads} | `2` |")
    old = old.replace(f"| {batch} | {rows[batch]['cpu']} |", f"| {batch} | 32 |")
    assert old != text
    problems = documented_mismatches(old, overlays)
    assert len(problems) == 2, problems


def test_image_tags_are_the_project_version(overlays: dict[str, Any]) -> None:
    """A release bumps pyproject's version; the overlays' image tags must follow (the image's
    org.opencontainers.image.version label is that version, scripts/image/build.sh)."""
    version = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["version"]
    for overlay, variant in (("cpu", "cpu"), ("gpu", "cuda")):
        image = container(overlays[overlay])["image"]
        assert image.endswith(f":{version}-{variant}"), image


# ----------------------------------------------------------------------------- user overlays


def user_overlay(
    tmp_path: Path, components: list[str], extra: dict[str, Any] | None = None
) -> list[dict[str, Any]]:
    """Build an overlay of the user's own on top of overlays/cpu, as deploy/README.md tells
    them to write it, with these components."""
    copy = tmp_path / "deploy"
    shutil.copytree(DEPLOY, copy)
    mine = copy / "overlays" / "mine"
    mine.mkdir()
    kustomization = {
        "apiVersion": "kustomize.config.k8s.io/v1beta1",
        "kind": "Kustomization",
        "resources": ["../cpu"],
        "components": [f"../../components/{c}" for c in components],
        **(extra or {}),
    }
    (mine / "kustomization.yaml").write_text(yaml.safe_dump(kustomization, sort_keys=False))
    resources = kustomize(mine)
    for resource in resources:
        validate(resource)
    return resources


def test_kafka_sasl_ssl_on_top_of_the_cpu_overlay_moves_keda_too(tmp_path: Path) -> None:
    """The component's broker address (the TLS listener) reaches KEDA's trigger even when the
    overlay below already ran its replacements with the plaintext one."""
    resources = user_overlay(tmp_path, ["kafka-sasl-ssl"])
    data = find(resources, "ConfigMap", "moderation-worker")["data"]
    trigger = find(resources, "ScaledObject")["spec"]["triggers"][0]
    assert data["KAFKA_BOOTSTRAP_SERVERS"].endswith(":9093")
    assert trigger["metadata"]["bootstrapServers"] == data["KAFKA_BOOTSTRAP_SERVERS"]
    assert trigger["metadata"]["tls"] == "enable"


def test_custom_model_needs_no_shared_volume(tmp_path: Path) -> None:
    """Every replica copies the model from a model image into its own emptyDir: no PVC, which
    nothing created and which (ReadWriteOnce) would not attach on a second node."""
    images = {"images": [{"name": "moderation-model", "newName": "registry.example/model",
                          "newTag": "v2"}]}  # fmt: skip
    resources = user_overlay(tmp_path, ["custom-model"], images)
    pod = find(resources, "Deployment")["spec"]["template"]["spec"]
    volumes = {v["name"]: v for v in pod["volumes"]}
    assert "emptyDir" in volumes["models"]
    assert not any("persistentVolumeClaim" in v for v in pod["volumes"])
    assert not any(r["kind"] == "PersistentVolumeClaim" for r in resources)
    (init,) = pod["initContainers"]
    assert init["image"] == "registry.example/model:v2"
    model = find(resources, "ConfigMap", "moderation-worker")["data"]["MODERATION_MODEL"]
    assert init["command"][-1] == model, "the init container copies to MODERATION_MODEL"
    mounts = {m["name"]: m for m in container(resources)["volumeMounts"]}
    assert mounts["models"]["readOnly"] is True
    init_mounts = {m["name"]: m for m in init["volumeMounts"]}
    assert Path(model).parent == Path(init_mounts["models"]["mountPath"])
    worker = container(resources)["securityContext"]
    for key in ("readOnlyRootFilesystem", "allowPrivilegeEscalation", "capabilities"):
        assert init["securityContext"][key] == worker[key], key  # restricted like the worker
    assert "limits" in init["resources"]
    dockerfile = (DEPLOY / "components" / "custom-model" / "Dockerfile.model").read_text()
    assert "COPY . /model/" in dockerfile and init["command"][-2] == "/model"


@pytest.mark.parametrize("with_sasl", [False, True])
def test_without_operators_applies_without_their_crds(tmp_path: Path, with_sasl: bool) -> None:
    """A cluster without KEDA and the Prometheus Operator: nothing of theirs is left, and what
    is left validates against the built-in Kubernetes schemas alone."""
    components = ["kafka-sasl-ssl", "without-operators"] if with_sasl else ["without-operators"]
    resources = user_overlay(tmp_path, components)
    kinds = {r["kind"] for r in resources}
    assert {"Deployment", "ConfigMap", "Service", "ServiceAccount", "PodDisruptionBudget"} <= kinds
    leftovers = [r["kind"] for r in resources if r["apiVersion"].startswith(OPERATOR_GROUPS)]
    assert not leftovers, leftovers
    pod = find(resources, "Deployment")["spec"]["template"]["metadata"]["annotations"]
    assert pod["prometheus.io/scrape"] == "true"  # annotation-based discovery still works


def test_readme_lists_the_cluster_prerequisites_and_the_way_around_them() -> None:
    text = README.read_text()
    for needed in ("KEDA", "Prometheus Operator", "components/without-operators",
                   "Dockerfile.model", "--format docker"):  # fmt: skip
        assert needed in text, needed
    assert "PVC" not in text.split("### Serve another model")[1].split("###")[0]
