"""The Dockerfile defects a real build found (issue 25, 1-6), each checked without an engine by
running the Dockerfile's own commands here; `make image-check` checks them again on the image.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import sysconfig
from pathlib import Path

import numpy as np
import pytest

from testing.dockerfile import REPO, instructions, stages

SITE = Path(sysconfig.get_path("purelib"))
TEXTS = ["Thank you for the citation.", "You are a stupid worthless idiot.", "I will kill you."]


def run_step(marker: str, stage: str = "builder") -> str:
    """The shell of the RUN in `stage` containing `marker`, without its --mount flags."""
    found = [a for k, a in stages()[stage] if k == "RUN" and marker in a]
    assert len(found) == 1, f"{len(found)} RUN steps with {marker!r} in {stage}"
    return re.sub(r"^(--mount=\S+\s+)+", "", found[0])


def fake_pip(tmp_path: Path) -> tuple[dict[str, str], Path]:
    """An environment whose `pip` records its arguments, PIP_CERT and that file's content."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    log = tmp_path / "pip.log"
    pip = bin_dir / "pip"
    pip.write_text(
        "#!/bin/bash\n"
        f'echo "ARGS $*" >> {log}\n'
        f'if [ -n "${{PIP_CERT:-}}" ]; then echo "CERT $(cat "$PIP_CERT" | tail -1)" >> {log}; fi\n'
    )
    pip.chmod(0o755)
    env = {k: v for k, v in os.environ.items() if not k.startswith("PIP_")}
    return {**env, "PATH": f"{bin_dir}:{os.environ['PATH']}"}, log


# ---------------------------------------------------------------- 1. compileall on Python 3.11
def test_compileall_step_passes_on_this_python_over_torch(tmp_path: Path) -> None:
    """The Dockerfile's compileall (its -x exclusion) over the installed torch's testing package,
    on this interpreter (3.11, where py312_intrinsics.py does not compile); bytecode goes to
    tmp_path (PYTHONPYCACHEPREFIX), the installed tree is not touched."""
    step = run_step("compileall")
    match = re.search(r"python -m compileall (-q )?(-x '([^']+)' )?", step)
    assert match, step
    target = SITE / "torch" / "testing"
    assert target.is_dir(), f"torch is installed first by `make test`: no {target}"
    env = {**os.environ, "PYTHONPYCACHEPREFIX": str(tmp_path)}
    command = [sys.executable, "-m", "compileall", "-q"]
    if match.group(3):
        command += ["-x", match.group(3)]
    result = subprocess.run([*command, str(target)], env=env, capture_output=True, text=True)
    assert result.returncode == 0, result.stdout[-2000:]
    if sys.version_info < (3, 12):  # the exclusion is what makes it pass, not luck
        plain = subprocess.run(
            [sys.executable, "-m", "compileall", "-q", str(target)], env=env, capture_output=True
        )
        assert plain.returncode != 0


# ---------------------------------------------------------------- 2. --format docker
def test_podman_builds_use_the_docker_format() -> None:
    """OCI format drops HEALTHCHECK and ignores SHELL: every podman build command we ship or
    document passes --format docker."""
    build = (REPO / "scripts" / "image" / "build.sh").read_text()
    assert re.search(r"\[ \"\$ENGINE\" = podman \] && args\+=\(--format docker\)", build)
    readme = (REPO / "deploy" / "README.md").read_text()
    podman_builds = re.findall(r"^podman build .*$", readme, re.M)
    assert podman_builds, "deploy/README.md shows no podman build command"
    assert all("--format docker" in line for line in podman_builds), podman_builds
    # and each stage that RUNs bash syntax sets SHELL (a docker-format build honours it)
    for name, body in stages().items():
        runs = [a for k, a in body if k == "RUN"]
        if any("[[" in r or "compgen" in r or "pipefail" in r or "${" in r for r in runs):
            assert ("SHELL", '["/bin/bash", "-o", "pipefail", "-c"]') in body, name


# ---------------------------------------------------------------- 3. torch index / wheelhouse
@pytest.mark.parametrize(
    ("variant", "index", "wheel", "expected"),
    [
        ("cpu-torch", "", False, "--no-deps --index-url https://download.pytorch.org/whl/cpu"),
        (
            "cpu-torch",
            "https://mirror.example/cpu",
            False,
            "--no-deps --index-url https://mirror.example/cpu",
        ),
        ("cpu-torch", "", True, "--no-deps --no-index --find-links WHEELHOUSE"),
        ("cuda", "", False, "--index-url https://pypi.org/simple"),
        ("cuda", "", True, "--no-index --find-links WHEELHOUSE"),
        ("cpu", "", True, None),  # no torch at all, even with a wheel at hand
        ("cpu", "https://mirror.example/cpu", False, None),
    ],
)
def test_torch_comes_from_the_index_or_the_wheelhouse(
    tmp_path: Path, variant: str, index: str, wheel: bool, expected: str | None
) -> None:
    """The torch step's own shell: a CPU build never falls back to PyPI (whose Linux torch is
    the multi-GB CUDA build); a wheelhouse with the torch wheel needs no index at all; the cpu
    variant (ONNX Runtime) installs no torch (`expected` None)."""
    wheelhouse = tmp_path / "wheelhouse"
    wheelhouse.mkdir()
    if wheel:
        (wheelhouse / "torch-2.13.0+cpu-cp311-cp311-manylinux_2_28_x86_64.whl").touch()
    (wheelhouse / "torch-2.12.0-cp311-cp311-manylinux_2_28_x86_64.whl").touch()  # wrong version
    step = run_step("torch==${TORCH_VERSION}").replace("/wheelhouse", str(wheelhouse))
    step = step.replace("/run/secrets/pip_ca", str(tmp_path / "no-ca"))
    env, log = fake_pip(tmp_path)
    env.update(VARIANT=variant, TORCH_INDEX_URL=index, TORCH_VERSION="2.13.0")
    subprocess.run(["bash", "-o", "pipefail", "-c", step], env=env, check=True)
    if expected is None:
        assert not log.exists(), log.read_text()
        return
    (call,) = log.read_text().splitlines()
    assert call == f"ARGS install {expected.replace('WHEELHOUSE', str(wheelhouse))} torch==2.13.0"


# ---------------------------------------------------------------- 5. extra CA as a secret
@pytest.mark.parametrize(
    ("marker", "variant", "installs"),
    [
        ("requirements/image.txt", "cpu", "-r requirements/image.txt"),
        ("requirements/image.txt", "cpu-torch", "-r requirements/image-torch.txt"),
        ("requirements/image.txt", "cuda", "-r requirements/image-torch.txt"),
        ("torch==${TORCH_VERSION}", "cpu-torch", "torch==2.13.0"),
        ("torch==${TORCH_VERSION}", "cpu", None),  # no pip call; the bundle still goes
    ],
)
def test_pip_steps_trust_an_extra_ca_given_as_a_secret(
    tmp_path: Path, marker: str, variant: str, installs: str | None
) -> None:
    """With the secret pip_ca, pip verifies with the system bundle plus that CA; the combined
    file is removed in the same step (never in a layer). Each variant installs its own lock:
    cpu the one without torch's packages."""
    system = tmp_path / "system.crt"
    system.write_text("SYSTEM-CA\n")
    extra = tmp_path / "pip_ca"
    extra.write_text("PROXY-CA\n")
    step = run_step(marker).replace("/run/secrets/pip_ca", str(extra))
    step = step.replace("/etc/ssl/certs/ca-certificates.crt", str(system))
    step = step.replace("/tmp/ca.pem", str(tmp_path / "ca.pem"))
    env, log = fake_pip(tmp_path)
    env.update(VARIANT=variant, TORCH_INDEX_URL="", TORCH_VERSION="2.13.0")
    subprocess.run(["bash", "-o", "pipefail", "-c", step], env=env, check=True)
    assert not (tmp_path / "ca.pem").exists(), "the combined bundle stayed in the layer"
    if installs is None:
        assert not log.exists(), log.read_text()
        return
    lines = log.read_text().splitlines()
    assert "CERT PROXY-CA" in lines
    assert lines[0].startswith("ARGS install") and lines[0].endswith(installs), lines[0]
    extra.write_text("")  # no secret given: pip's defaults
    log.unlink()
    subprocess.run(["bash", "-o", "pipefail", "-c", step], env=env, check=True)
    assert not any(line.startswith("CERT") for line in log.read_text().splitlines())
    assert any(k == "RUN" and "--mount=type=secret,id=pip_ca" in a for k, a in instructions())


# ---------------------------------------------------------------- 6. the user, and the size
def test_user_is_not_a_system_account_above_sys_uid_max() -> None:
    """`useradd --system --uid 10001` warns (10001 > SYS_UID_MAX): the account is a regular one
    with a fixed uid; the manifests run as that uid."""
    step = run_step("useradd", stage="runtime")
    assert "--system" not in step
    assert re.search(r"useradd [^&]*--uid 10001 --gid 10001", step)
    assert re.search(r"groupadd [^&]*--gid 10001", step)


def test_what_serving_never_loads_is_removed() -> None:
    """torch's headers, CMake files and C++ test binaries (~195 MB) leave the venv, and the
    worker never needs them: it neither compiles extensions nor calls torch.compile."""
    step = run_step("compileall")
    for path in ('"$site/torch/include"', '"$site/torch/share"', '"$site/torch/test"',
                 '"$site"/torch/bin/test_*'):  # fmt: skip
        assert path in step, path
    used = subprocess.run(
        ["grep", "-rlE", r"torch\.compile\(|cpp_extension|torch\.utils\.benchmark", "worker"],
        cwd=REPO, capture_output=True, text=True,
    )  # fmt: skip
    assert used.stdout == "", f"the worker now needs torch's C++ toolchain: {used.stdout}"


def test_the_trimmed_openvino_still_serves_the_default_model(tmp_path: Path) -> None:
    """The cpu image's OpenVINO keeps only its CPU plugin and ONNX frontend: the Dockerfile's
    removals, run on a copy of the installed package, leave one that compiles the default model
    and scores as the whole package does, without the GPU/NPU plugins it never loads."""
    pytest.importorskip("openvino")
    step = run_step("compileall")
    trim = re.search(r'&& (ov="\$site/openvino" .*?) && python -m compileall', step, re.S)
    assert trim is not None, "the OpenVINO removals left the compileall step"
    site = tmp_path / "site"
    site.mkdir()
    installed = SITE / "openvino"
    try:  # hard links: the removals unlink the copies' names only
        subprocess.run(["cp", "-al", str(installed), str(site / "openvino")], check=True)
    except subprocess.CalledProcessError:
        shutil.copytree(installed, site / "openvino", dirs_exist_ok=True)
    before = sum(f.stat().st_size for f in site.rglob("*") if f.is_file())
    subprocess.run(["bash", "-c", trim.group(1)], env={**os.environ, "site": str(site)}, check=True)
    after = sum(f.stat().st_size for f in site.rglob("*") if f.is_file())
    assert before - after > 60e6, (before, after)
    assert not list((site / "openvino" / "libs").glob("*gpu*"))
    score = (
        "import json, openvino\n"
        f"assert openvino.__file__.startswith({str(site)!r}), openvino.__file__\n"
        "from worker.backends.model import load_served_model\n"
        "served = load_served_model(None, backend='openvino', device='cpu', precision='fp32',"
        " threads=1)\n"
        f"print(json.dumps(served.score({TEXTS!r}).tolist()))\n"
    )
    child = subprocess.run(
        [sys.executable, "-c", score], capture_output=True, text=True, cwd=REPO, timeout=300,
        env={**os.environ, "PYTHONPATH": f"{site}{os.pathsep}{REPO}", "HF_HUB_OFFLINE": "1"},
    )  # fmt: skip
    assert child.returncode == 0, child.stderr[-2000:]
    from worker.backends.model import load_served_model

    whole = load_served_model(None, backend="openvino", device="cpu", precision="fp32", threads=1)
    got = json.loads(child.stdout.strip().splitlines()[-1])
    np.testing.assert_allclose(got, whole.score(TEXTS), rtol=0, atol=1e-6)
