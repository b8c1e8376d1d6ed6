#!/usr/bin/env bash
# Prepare, on a machine with network, the wheels a bare GPU machine needs to run qwenpt with no network at
# all: Python 3.12, Linux x86_64, torch (2.11 + CUDA 13 there) already installed.
#
#   bash scripts/gpu/fetch_wheels.sh DEST [--te | --minimal]
#
# --minimal: only scripts/gpu/minimal.txt (megatron-core, Hydra, the data readers' parsers; 13 MB), for an
# image that already has the scientific stack; run.sh installs them over it.
#
# DEST gets megatron-core and every other runtime and test dependency, pinned to the versions a fresh
# `pip install -e '.[dev]'` resolves on Python 3.12 (torch, triton and the nvidia-* libraries excluded:
# the GPU machine has its own). --te adds Transformer Engine for CUDA 13: the prebuilt core library
# (transformer_engine_cu13, ~280 MB) and the PyTorch extension, which PyPI ships only as source
# (transformer_engine_torch sdist; scripts/gpu/run.sh compiles it there against the installed torch), with
# its build tools. Then copy the repository and DEST to the GPU machine and run scripts/gpu/run.sh.
set -euo pipefail
DEST=${1:?usage: fetch_wheels.sh DEST [--te]}
TE=${2:-}
cd "$(dirname "$0")/../.."
mkdir -p "$DEST"
DEST=$(cd "$DEST" && pwd)
if [ "$TE" = "--minimal" ]; then
    grep -v '^#' scripts/gpu/minimal.txt | grep -v '^packaging' > "$DEST/requirements.txt"
    grep -v '^#' scripts/gpu/minimal.txt | while read -r pin; do
        python3 -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
            --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 \
            -d "$DEST" "$pin" 2>/dev/null || python3 -m pip wheel -q --no-deps -w "$DEST" "$pin"
    done
    echo "$(ls "$DEST" | wc -l) files, $(du -sh "$DEST" | cut -f1) in $DEST"
    exit 0
fi
PY312=$(PYENV_VERSION=3.12.1 pyenv which python3.12 2>/dev/null || command -v python3.12 ||
    echo "${PYENV_ROOT:-$HOME/.pyenv}/versions/3.12.1/bin/python3.12")
RESOLVE=$(mktemp -d)
trap 'rm -rf "$RESOLVE"' EXIT
if [ -n "${QWENPT_PY312_VENV:-}" ]; then  # reuse a Python 3.12 venv that has `pip install -e '.[dev]'` already
    ln -s "$QWENPT_PY312_VENV" "$RESOLVE/venv"
else
    "$PY312" -m venv "$RESOLVE/venv"
    "$RESOLVE/venv/bin/pip" install -q -e '.[dev]'
fi
TE_VERSION=
if [ "$TE" = "--te" ]; then  # TE's PyTorch extension's runtime dependencies join the closure below
    TE_VERSION=$("$RESOLVE/venv/bin/pip" index versions transformer-engine-cu13 2>/dev/null | sed -n 's/^transformer-engine-cu13 (\(.*\))$/\1/p')
    "$RESOLVE/venv/bin/pip" install -q einops onnxscript onnx nvdlfw-inspect 'nvidia-cudnn-frontend>=1.29' pydantic
fi
# the dependency closure of what train.py, the tests and the benchmarks import, as resolved above
"$RESOLVE/venv/bin/python" - "$TE" > "$DEST/requirements.txt" <<'PY'
import importlib.metadata as md
import re
import sys

from packaging.requirements import Requirement

roots = ["megatron-core", "hydra-core", "omegaconf", "numpy", "pyarrow", "tokenizers", "wandb", "tqdm", "rich",
         "psutil", "pyyaml", "py3langid", "zstandard", "scipy", "pytest", "transformers", "safetensors", "packaging"]
if sys.argv[1:] == ["--te"]:
    roots += ["einops", "onnxscript", "onnx", "nvdlfw-inspect", "nvidia-cudnn-frontend", "pydantic"]
skip = re.compile(r"^(torch|triton|nvidia-(?!cudnn-frontend).*|cuda-.*)$")
pins, stack = {}, list(roots)
while stack:
    name = stack.pop()
    key = re.sub(r"[-_.]+", "-", name).lower()
    if key in pins or skip.match(key):
        continue
    dist = md.distribution(name)
    pins[key] = dist.version
    for r in dist.requires or []:
        req = Requirement(r)
        if req.marker is None or req.marker.evaluate({"extra": ""}):
            stack.append(req.name)
print("\n".join(f"{k}=={v}" for k, v in sorted(pins.items())))
PY
TARGET=(--python-version 3.12 --implementation cp --abi cp312 --platform manylinux_2_28_x86_64
        --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 --platform linux_x86_64)
# binary wheels for the target; a package published only as source is built here into a wheel (pure Python)
while read -r pin; do
    "$RESOLVE/venv/bin/pip" download -q --no-deps --only-binary=:all: "${TARGET[@]}" -d "$DEST" "$pin" 2>/dev/null ||
        "$RESOLVE/venv/bin/pip" wheel -q --no-deps -w "$DEST" "$pin"
done < "$DEST/requirements.txt"
"$RESOLVE/venv/bin/pip" download -q --no-deps --only-binary=:all: -d "$DEST" setuptools wheel
if [ -n "$TE_VERSION" ]; then
    "$RESOLVE/venv/bin/pip" download -q --no-deps --only-binary=:all: "${TARGET[@]}" -d "$DEST" \
        "transformer-engine==$TE_VERSION" "transformer-engine-cu13==$TE_VERSION" pybind11 ninja importlib-metadata zipp
    # source only on PyPI; preparing its metadata needs a CUDA build of torch, which the resolver venv has
    "$RESOLVE/venv/bin/pip" download -q --no-deps --no-binary=:all: --no-build-isolation -d "$DEST" \
        "transformer-engine-torch==$TE_VERSION"
fi
echo "$(ls "$DEST" | wc -l) files, $(du -sh "$DEST" | cut -f1) in $DEST"
