"""`make image-check`: run the built image as an operator would, and report its figures.

Checks, each one PASS or FAIL line:
- metadata (container-structure): numeric non-root user, the tini + console-script entrypoint,
  a health check on /healthz, port 9000 exposed, OCI labels with the version (pyproject.toml)
  and revision (the build's commit);
- `info --json --load` loads the baked-in model, as uid 10001 with a read-only root filesystem;
- the custom-model component's path: a model image from its Dockerfile.model, its init
  container's command copying the model into a shared directory, the worker serving it;
- against a tansu broker on the host, with `--network host --read-only --tmpfs /tmp`, all
  capabilities dropped: comments are scored to the output topic, a bad record is dead-lettered,
  /readyz answers 200, the image's HEALTHCHECK passes, the root filesystem refuses writes and
  /tmp takes them, and SIGTERM drains: the container exits 0 with nothing lost.

Reports the image size, the build time (image-results/build.json, from `make image`), the
start-to-ready time, the worker's own start-up phases (`moderation_startup_seconds`, and their
sum without the group join: issue 26's "start-up minus group join"), the backend it chose (with
`auto`: the figures it measured), the largest layers and the largest packages of the venv;
writes image-results/report.json. The last line is `image-check: N checks passed, N failed`;
the exit code is 1 when one failed.

    python -m scripts.image_check [--image localhost/moderation-worker:cpu] [--engine podman]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
import tomllib
import urllib.error
import urllib.request
import uuid
from pathlib import Path
from typing import Any

import yaml

from testing.http import http_get, metric_values
from testing.kafka import comment, committed_offsets, produce, read_all
from testing.topics import fresh_topics
from worker.ops.dev_broker import TansuBroker, free_port

REPO = Path(__file__).resolve().parents[1]
RESULTS = REPO / "image-results"
UID = "10001"
LOCAL_BASE = "localhost/moderation-base:bookworm"  # scripts/image/base.sh
COMMENTS = 20
DRAIN_COMMENTS = 2000  # in flight when SIGTERM comes


class Checks:
    """Collects PASS/FAIL lines."""

    def __init__(self) -> None:
        self.passed = 0
        self.failed: list[str] = []

    def check(self, name: str, ok: bool, detail: str = "") -> bool:
        print(f"{'PASS' if ok else 'FAIL'} {name}{': ' + detail if detail else ''}", flush=True)
        if ok:
            self.passed += 1
        else:
            self.failed.append(name)
        return ok


def engine_command() -> str:
    configured = os.environ.get("ENGINE")
    if configured:
        return configured
    docker = shutil.which("docker")
    if docker and subprocess.run([docker, "info"], capture_output=True).returncode == 0:
        return "docker"
    if shutil.which("podman"):
        return "podman"
    raise SystemExit("image-check: neither a Docker engine nor podman")


def run(*args: str, timeout: float = 300, check: bool = False) -> subprocess.CompletedProcess[str]:
    return subprocess.run(list(args), capture_output=True, text=True, timeout=timeout, check=check)


def metadata_problems(config: dict[str, Any], version: str, revision: str | None) -> list[str]:
    """What is wrong with an image's config (`docker/podman image inspect` .Config): the
    container-structure rules of this image. Empty when it is right."""
    problems = []
    user = config.get("User") or ""
    if user.split(":")[0] != UID:
        problems.append(f"User is {user!r}, not {UID}:{UID}")
    entrypoint = config.get("Entrypoint") or []
    if entrypoint != ["/usr/bin/tini", "--", "moderation-worker"]:
        problems.append(f"Entrypoint is {entrypoint}")
    if (config.get("Cmd") or []) != ["run"]:
        problems.append(f"Cmd is {config.get('Cmd')}")
    test = (config.get("Healthcheck") or {}).get("Test") or []
    if not test or test[0] not in ("CMD", "CMD-SHELL") or "/healthz" not in " ".join(test):
        problems.append("no HEALTHCHECK on /healthz (built without --format docker?)")
    if "9000/tcp" not in (config.get("ExposedPorts") or {}):
        problems.append(f"port 9000 not exposed: {sorted(config.get('ExposedPorts') or {})}")
    labels = config.get("Labels") or {}
    prefix = "org.opencontainers.image."
    for key in ("title", "description", "licenses", "version", "revision"):
        if not labels.get(prefix + key):
            problems.append(f"label {prefix}{key} missing")
    if labels.get(prefix + "version") != version:
        problems.append(f"label version {labels.get(prefix + 'version')!r} != {version!r}")
    if revision and labels.get(prefix + "revision") != revision:
        problems.append(f"label revision {labels.get(prefix + 'revision')!r} != {revision!r}")
    if not any(str(k).startswith("HF_HUB_OFFLINE=1") for k in config.get("Env") or []):
        problems.append("HF_HUB_OFFLINE=1 not set")
    return problems


def http_status(url: str) -> int | None:
    try:
        with urllib.request.urlopen(url, timeout=2) as response:
            return int(response.status)
    except urllib.error.HTTPError as error:
        return int(error.code)
    except (OSError, ValueError):
        return None


def layers(engine: str, image: str) -> list[tuple[int, str]]:
    """(bytes, created-by) of each layer, largest first."""
    out = run(engine, "history", "--no-trunc", "--format", "{{json .}}", image).stdout
    entries: list[dict[str, Any]] = []
    for line in out.splitlines():  # docker: one object a line; podman 4.3: one list
        parsed = json.loads(line)
        entries.extend(parsed if isinstance(parsed, list) else [parsed])
    result = []
    for entry in entries:
        size = entry.get("Size", entry.get("size"))
        if isinstance(size, str):  # docker: "1.2GB"
            size = _parse_size(size)
        created = str(entry.get("CreatedBy") or "")
        created = re.sub(r"\s+", " ", created)
        result.append((int(size or 0), created[:110]))
    return sorted(result, reverse=True)


def venv_sizes(engine: str, image: str, top: int = 8) -> dict[str, float]:
    """MB of the image's venv, and of its largest installed packages (from `du` in the image)."""
    script = (
        "cd /opt/venv && du -sm . && "
        f"du -sm lib/python3*/site-packages/* | sort -rn | head -n {top}"
    )
    result = run(engine, "run", "--rm", "--entrypoint", "sh", image, "-c", script)
    sizes: dict[str, float] = {}
    for line in result.stdout.splitlines():
        megabytes, _, path = line.partition("\t")
        if megabytes.isdigit():
            sizes["venv" if path == "." else path.rsplit("/", 1)[-1]] = float(megabytes)
    return sizes


def startup_phases(port: int) -> dict[str, float]:
    """The worker's `moderation_startup_seconds` by phase (set once ready)."""
    values = metric_values(http_get(f"http://127.0.0.1:{port}/metrics", timeout=2).body)
    prefix = "moderation_startup_seconds{phase="
    return {k[len(prefix) : -1]: v for k, v in values.items() if k.startswith(prefix)}


def worker_rss_mb(engine: str, container: str) -> float | None:
    """Resident memory of the container's largest process (the worker; tini is PID 1), MB."""
    out = run(engine, "exec", container, "sh", "-c", "grep -h VmRSS /proc/[0-9]*/status").stdout
    sizes = [int(line.split()[1]) for line in out.splitlines() if line.startswith("VmRSS:")]
    return round(max(sizes) / 1024, 1) if sizes else None


def worker_cpu_s(engine: str, container: str) -> float | None:
    """CPU seconds (user + system) the container's busiest process (the worker) has used: at
    ready, what its start-up cost, whatever else ran on the host's CPUs meanwhile."""
    command = "getconf CLK_TCK; cat /proc/[0-9]*/stat"
    lines = run(engine, "exec", container, "sh", "-c", command).stdout.splitlines()
    if not lines or not lines[0].strip().isdigit():
        return None
    used = []
    for line in lines[1:]:
        fields = line.rsplit(")", 1)[-1].split()  # after the name: state, ppid, ...
        if len(fields) > 12:
            used.append(int(fields[11]) + int(fields[12]))  # utime, stime (fields 14, 15)
    return round(max(used) / int(lines[0]), 2) if used else None


def served_backend(log: str) -> str | None:
    """The backend the worker chose at start, with its reason (its `backend: ...` log line:
    with `auto`, the measured figures)."""
    found = re.findall(r" worker\.app: backend: (.+)", log)
    return found[-1].strip() if found else None


def _parse_size(text: str) -> int:
    match = re.fullmatch(r"([\d.]+)\s*([kKMG]?B)", text.strip())
    if not match:
        return 0
    factor = {"B": 1, "kB": 1e3, "KB": 1e3, "MB": 1e6, "GB": 1e9}[match.group(2)]
    return int(float(match.group(1)) * factor)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m scripts.image_check", description=__doc__)
    parser.add_argument(
        "--image", default=os.environ.get("IMAGE", "localhost/moderation-worker:cpu")
    )
    parser.add_argument("--ready-timeout", type=float, default=180.0)
    args = parser.parse_args(argv)
    engine = engine_command()
    image = args.image
    checks = Checks()
    report: dict[str, Any] = {"image": image, "engine": engine}
    build_json = RESULTS / "build.json"
    build = json.loads(build_json.read_text()) if build_json.exists() else {}
    report["build_seconds"] = build.get("build_seconds")

    inspected = run(engine, "image", "inspect", image)
    if inspected.returncode != 0:
        print(f"image-check: no image {image} (make image first): {inspected.stderr.strip()}")
        return 2
    info = json.loads(inspected.stdout)[0]
    version = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["version"]
    revision = build.get("revision") if build.get("image") == image else None
    config = dict(info.get("Config") or {})
    if not config.get("Healthcheck") and info.get("Healthcheck"):  # podman keeps it beside
        config["Healthcheck"] = info["Healthcheck"]
    problems = metadata_problems(config, version, revision)
    checks.check(
        "metadata (user, entrypoint, healthcheck, port, OCI labels)",
        not problems,
        "; ".join(problems),
    )
    report["size_bytes"] = int(info.get("Size") or info.get("VirtualSize") or 0)
    report["largest_layers"] = [
        {"bytes": size, "created_by": created} for size, created in layers(engine, image)[:6]
    ]
    report["venv_mb"] = venv_sizes(engine, image)
    if build.get("image") == image:  # the log of this image's build
        log = (
            (RESULTS / "build.log").read_text(errors="replace")
            if (RESULTS / "build.log").exists()
            else ""
        )
        warned = [
            line
            for line in log.splitlines()
            if "SYS_UID_MAX" in line or "HEALTHCHECK is not supported" in line
        ]
        checks.check(
            "build log: no SYS_UID_MAX / dropped-HEALTHCHECK warning",
            not warned,
            "; ".join(warned[:3]),
        )

    locked = (
        "--read-only",
        "--tmpfs",
        "/tmp:rw,mode=1777",
        "--cap-drop",
        "all",
        "--security-opt",
        "no-new-privileges",
    )
    started = time.monotonic()
    result = run(
        engine,
        "run",
        "--rm",
        *locked,
        "-e",
        "MODERATION_DEVICE=cpu",
        image,
        "info",
        "--json",
        "--load",
    )
    loaded = result.returncode == 0
    try:
        loaded = loaded and bool(json.loads(result.stdout))
    except ValueError:
        loaded = False
    checks.check(
        "info --json --load (read-only, non-root)",
        loaded,
        f"{time.monotonic() - started:.1f} s" if loaded else result.stderr[-500:],
    )

    model_check(engine, image, locked, checks)

    with TansuBroker() as broker:
        topics = fresh_topics(broker.bootstrap, "image", partitions=2)
        port = free_port()
        name = f"moderation-image-check-{uuid.uuid4().hex[:8]}"
        env = {
            "KAFKA_BOOTSTRAP_SERVERS": broker.bootstrap,
            "MODERATION_INPUT_TOPIC": topics.input,
            "MODERATION_OUTPUT_TOPIC": topics.output,
            "MODERATION_DLQ_TOPIC": topics.dlq,
            "MODERATION_GROUP_ID": topics.group,
            "MODERATION_METRICS_PORT": str(port),
            "MODERATION_DEVICE": "cpu",
        }
        env_args = [item for key, value in env.items() for item in ("-e", f"{key}={value}")]
        started = time.monotonic()
        # The HEALTHCHECK's timer needs systemd; run it by hand below instead.
        result = run(
            engine,
            "run",
            "-d",
            "--name",
            name,
            "--network",
            "host",
            *locked,
            *(["--health-interval", "disable"] if engine == "podman" else []),
            *env_args,
            image,
        )
        failed = "" if result.returncode == 0 else result.stderr[-500:]
        if not checks.check("container starts", result.returncode == 0, failed):
            return finish(checks, report)
        try:
            ready_s = None
            deadline = started + args.ready_timeout
            while time.monotonic() < deadline:
                if http_status(f"http://127.0.0.1:{port}/readyz") == 200:
                    ready_s = time.monotonic() - started
                    break
                state = run(engine, "inspect", "--format", "{{.State.Running}}", name).stdout
                if state.strip() != "true":
                    break
                time.sleep(0.25)
            report["start_to_ready_seconds"] = round(ready_s, 2) if ready_s else None
            if not checks.check(
                "/readyz answers 200",
                ready_s is not None,
                f"{ready_s:.1f} s after `run`"
                if ready_s
                else run(engine, "logs", name).stderr[-1500:],
            ):
                return finish(checks, report)
            phases = startup_phases(port)
            report["startup_phases"] = phases
            report["rss_mb_when_ready"] = worker_rss_mb(engine, name)
            report["cpu_seconds_when_ready"] = worker_cpu_s(engine, name)
            started = run(engine, "logs", name)
            report["backend"] = served_backend(started.stdout + started.stderr)
            report["startup_minus_join_seconds"] = round(
                sum(v for k, v in phases.items() if k != "kafka_join"), 3
            )
            whoami = run(engine, "exec", name, "id", "-u").stdout.strip()
            checks.check("runs as uid 10001", whoami == UID, whoami)
            root_write = run(engine, "exec", name, "sh", "-c", "touch /opt/venv/x").returncode
            tmp_write = run(
                engine, "exec", name, "sh", "-c", "touch /tmp/x && rm /tmp/x"
            ).returncode
            checks.check(
                "root filesystem read-only, /tmp writable",
                root_write != 0 and tmp_write == 0,
                f"write to /opt: rc {root_write}, to /tmp: rc {tmp_write}",
            )
            health = run(engine, "healthcheck", "run", name) if engine == "podman" else None
            if health is not None:
                checks.check(
                    "HEALTHCHECK passes",
                    health.returncode == 0,
                    (health.stdout + health.stderr).strip()[-300:],
                )
            records = [comment(f"c{i}", f"image check comment number {i}") for i in range(COMMENTS)]
            bad = [(b"bad", b"{not json")]
            asyncio.run(produce(broker.bootstrap, topics.input, [*records, *bad]))
            scored = asyncio.run(
                read_all(
                    broker.bootstrap,
                    topics.output,
                    COMMENTS,
                    timeout=60,
                    distinct_keys=True,
                    partial=True,
                )
            )
            ok = {r.key for r in scored} == {k for k, _ in records} and all(
                "scores" in json.loads(r.value) for r in scored
            )
            checks.check(
                f"{COMMENTS} comments scored to the output topic", ok, f"{len(scored)} records"
            )
            dead = asyncio.run(read_all(broker.bootstrap, topics.dlq, 1, timeout=60, partial=True))
            checks.check(
                "bad record dead-lettered",
                [r.key for r in dead] == [b"bad"],
                f"{len(dead)} records",
            )
            # SIGTERM with work in flight: it drains and exits 0, nothing lost.
            more = [comment(f"d{i}", f"drain comment {i}") for i in range(DRAIN_COMMENTS)]
            asyncio.run(produce(broker.bootstrap, topics.input, more))
            stop_started = time.monotonic()
            run(engine, "kill", "--signal", "TERM", name)
            code = run(engine, "wait", name, timeout=60).stdout.strip()
            stop_s = time.monotonic() - stop_started
            report["sigterm_to_exit_seconds"] = round(stop_s, 2)
            logs = run(engine, "logs", name)
            checks.check(
                "SIGTERM drains, exit 0",
                code == "0",
                f"exit {code} after {stop_s:.1f} s"
                + ("" if code == "0" else (logs.stdout + logs.stderr)[-800:]),
            )
            after = asyncio.run(
                read_all(
                    broker.bootstrap,
                    topics.output,
                    COMMENTS + DRAIN_COMMENTS,
                    timeout=10,
                    distinct_keys=True,
                    partial=True,
                )
            )
            done = len({r.key for r in after}) + 1  # + the dead letter
            offsets = asyncio.run(committed_offsets(broker.bootstrap, topics.group, topics.input))
            committed = sum(o or 0 for o in offsets.values())
            # everything committed was published (the rest is re-read by the next worker)
            checks.check(
                "drain commits only what was published",
                committed == done,
                f"committed {committed}, published {done} of {COMMENTS + DRAIN_COMMENTS + 1}",
            )
        finally:
            run(engine, "rm", "-f", name)
    return finish(checks, report)


def model_check(engine: str, image: str, locked: tuple[str, ...], checks: Checks) -> None:
    """The custom-model component's path, with containers instead of a pod: a model image built
    with its Dockerfile.model (from the bundled model), its init container's own command copying
    the model into a shared directory (the emptyDir), the worker serving MODERATION_MODEL from it
    read-only; and refusing to start (exit 2) when that directory is empty."""
    component = REPO / "deploy" / "components" / "custom-model"
    patch = yaml.safe_load((component / "deployment-patch.yaml").read_text())
    (init,) = patch["spec"]["template"]["spec"]["initContainers"]
    model_dir = yaml.safe_load((component / "configmap-patch.yaml").read_text())["data"][
        "MODERATION_MODEL"
    ]
    model_image = "localhost/moderation-model:image-check"
    build = [engine, "build", "-q", "-f", str(component / "Dockerfile.model"), "-t", model_image]
    if engine == "podman":  # no registry assumed: the local base has `cp`
        build += ["--format", "docker", "--build-arg", f"BASE_IMAGE={LOCAL_BASE}"]
    built = run(*build, str(REPO / "worker" / "default_model"))
    if not checks.check("custom-model: Dockerfile.model builds", built.returncode == 0,
                        built.stderr[-500:]):  # fmt: skip
        return
    with tempfile.TemporaryDirectory() as shared:
        os.chmod(shared, 0o1777)  # an emptyDir with fsGroup: writable by uid 10001
        mount = f"{shared}:{Path(model_dir).parent}"

        def serve(mount: str) -> subprocess.CompletedProcess[str]:
            env = f"MODERATION_MODEL={model_dir}"
            args = ("-v", f"{mount}:ro", "-e", env, image, "info", "--json", "--load")
            return run(engine, "run", "--rm", *locked, *args)

        empty = serve(mount)
        copied = run(
            engine,
            "run",
            "--rm",
            "--user",
            f"{UID}:{UID}",
            "--read-only",
            "-v",
            mount,
            model_image,
            *init["command"],
        )
        served = serve(mount)
        try:
            loaded = bool(json.loads(served.stdout).get("loaded"))
        except ValueError:
            loaded = False
        ok = empty.returncode == 2 and copied.returncode == 0 and loaded
        detail = (
            f"without: rc {empty.returncode}; copy: rc {copied.returncode} "
            f"{copied.stderr[-300:]}; served: rc {served.returncode} {served.stderr[-300:]}"
        )
        checks.check(
            "custom-model: init command copies, worker serves it (and exits 2 without it)",
            ok,
            "" if ok else detail,
        )
    run(engine, "rmi", model_image)


def finish(checks: Checks, report: dict[str, Any]) -> int:
    RESULTS.mkdir(exist_ok=True)
    report["passed"], report["failed"] = checks.passed, checks.failed
    (RESULTS / "report.json").write_text(json.dumps(report, indent=2) + "\n")
    size = report.get("size_bytes") or 0
    print(
        f"image size: {size / 1e6:.0f} MB; build: {report.get('build_seconds')} s; "
        f"start to ready: {report.get('start_to_ready_seconds')} s; start-up minus group join: "
        f"{report.get('startup_minus_join_seconds')} s {report.get('startup_phases')}"
    )
    print(f"backend: {report.get('backend')}")
    rss = report.get("rss_mb_when_ready")
    print(
        f"venv (MB): {report.get('venv_mb')}; the worker's RSS when ready: {rss} MB, CPU "
        f"seconds used: {report.get('cpu_seconds_when_ready')}"
    )
    for layer in report.get("largest_layers", []):
        print(f"  {layer['bytes'] / 1e6:8.1f} MB  {layer['created_by']}")
    print(f"image-check: {checks.passed} checks passed, {len(checks.failed)} failed")
    return 1 if checks.failed else 0


if __name__ == "__main__":
    sys.exit(main())
