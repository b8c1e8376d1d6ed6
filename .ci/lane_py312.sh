#!/usr/bin/env bash
# CI lane 2: Python 3.12 with the newest megatron-core release (0.17 and later need Python 3.12; the default
# lane, .ci/run, runs 0.16.1 on Python 3.11). Its own virtualenv, everything from PyPI (on Python 3.12 pip
# takes torch's CUDA wheel, which runs on the CPU), then the tests that touch megatron-core: the CPU layer,
# the model, the training loop and bf16, checkpoints and resume, Hugging Face interop, every parallel
# layout against one process (the full matrix: lane 1 runs a subset), the GPU step's host budget, the training
# data order and what loading trusts.
#
#   bash .ci/lane_py312.sh [pytest args...]      (QWENPT_PY312_VENV=DIR reuses an installed venv)
set -euo pipefail
cd "$(dirname "$0")/.."
export PIP_DISABLE_PIP_VERSION_CHECK=1 PYTHONUNBUFFERED=1
VENV=${QWENPT_PY312_VENV:-${TMPDIR:-/tmp}/qwenpt-ci-py312}
if [ -z "${QWENPT_PY312_VENV:-}" ]; then
    PY312=$(PYENV_VERSION=3.12.1 pyenv which python3.12 2>/dev/null || command -v python3.12 ||
        echo "${PYENV_ROOT:-$HOME/.pyenv}/versions/3.12.1/bin/python3.12")
    trap 'rm -rf "$VENV"' EXIT  # 4+ GB: torch's CUDA wheel and its libraries
    "$PY312" -m venv --clear "$VENV"
    "$VENV/bin/pip" install -q -e '.[dev]'
fi
"$VENV/bin/python" -c "import sys, torch, megatron.core; print(f'lane py312: Python {sys.version.split()[0]}, torch {torch.__version__}, megatron-core {megatron.core.__version__}')"
# each topic's tests in both tiers; default_lane tests (qwenpt's own logic over paths the others cover) are left to
# lane 1, to keep CI within its time
TOPICS="cpu_compat models train precision convert hybrid parallel long_context gpu_bench gpu_step data_order trust"
FILES=()
for topic in $TOPICS; do
    for tier in unit integration; do
        if [ -f "tests/$tier/test_$topic.py" ]; then FILES+=("tests/$tier/test_$topic.py"); fi
    done
done
"$VENV/bin/python" -m pytest -q -m "not default_lane" "${FILES[@]}" "$@"
