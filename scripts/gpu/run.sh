#!/usr/bin/env bash
# A bare GPU machine (Python 3.12, torch with CUDA installed; no megatron-core, no Transformer Engine, no
# network) in one go: install qwenpt from the wheels scripts/gpu/fetch_wheels.sh prepared, build TE's
# PyTorch extension if its source was carried and nvcc exists (else the SDPA spec runs, and the log says
# so), run tests/gpu, then bench/gpu_mfu.py for Qwen2.5-0.5B and -1.5B (bf16, then FP8 where TE and the GPU
# have it) against Megatron-LM's pretrain_gpt.py when a tree is given.
#
#   WHEELS=DIR [MEGATRON_LM=DIR] [OUT=DIR] bash scripts/gpu/run.sh
#
# Writes to $OUT (default ./gpu_results): setup.log (versions; TE build seconds or why not), gpu_tests.log
# and gpu_tests.xml, gpu_mfu.json (the benchmark table) and every run's log under bench_*/.
# Knobs: STEPS (20), WARMUP (5), REPEATS (1), GLOBAL_BATCH (16), MICRO_BATCHES ("qwen2.5_1.5b:2 qwen2.5_0.5b:4"),
# PROFILE (0: profile qwenpt's last N steps, a kernel table per run), DOCUMENT_MASK (both: qwenpt with and without;
# on | off), TE_BUILD_TIMEOUT (1200 s), TEST_TIMEOUT and
# BENCH_TIMEOUT (seconds per pytest run and per benchmark invocation; 0 = none), SKIP_TESTS=1, SKIP_BENCH=1.
# WHEELS may hold a requirements.txt (fetch_wheels.sh writes one); without it every wheel there is installed.
set -uo pipefail
cd "$(dirname "$0")/../.."
WHEELS=$(cd "${WHEELS:?set WHEELS to the folder fetch_wheels.sh filled}" && pwd)
OUT=${OUT:-$PWD/gpu_results}
mkdir -p "$OUT"
OUT=$(cd "$OUT" && pwd)
VENV=${VENV:-/tmp/qwenpt-gpu-venv}  # or none: install into $PYTHON's own environment
log() { echo "[$(date -u +%H:%M:%S)] $*" | tee -a "$OUT/setup.log"; }

# --- install: the image's torch stays (system site packages), everything else from the wheels --------------
BASE=${PYTHON:-python3}
if [ "$VENV" = none ]; then  # a machine that is thrown away afterwards: install into $PYTHON's environment
    PY=$BASE
else
    "$BASE" -m venv --system-site-packages "$VENV" || { log "could not create a virtualenv at $VENV (VENV=none installs into $BASE's environment)"; exit 1; }
    PY="$VENV/bin/python"
    # an image whose python3 is itself a virtualenv (torch installed there, not in the base interpreter):
    # the new venv sees the base's site-packages only, so it is pointed at the image venv's too
    "$BASE" -c "import sys; sys.exit(sys.prefix == sys.base_prefix)" &&
        "$BASE" -c "import site; print('\n'.join(site.getsitepackages()))" > "$("$PY" -c "import sysconfig; print(sysconfig.get_path('purelib'))")/_image_venv.pth"
fi
PIP=("$PY" -m pip install -q --no-index --find-links "$WHEELS")
"${PIP[@]}" setuptools wheel 2>&1 | tee -a "$OUT/setup.log"
if [ -f "$WHEELS/requirements.txt" ]; then REQS=(-r "$WHEELS/requirements.txt"); else REQS=("$WHEELS"/*.whl); fi
"${PIP[@]}" "${REQS[@]}" 2>&1 | tee -a "$OUT/setup.log" || { log "dependency install failed"; exit 1; }
"${PIP[@]}" --no-deps --no-build-isolation -e . 2>&1 | tee -a "$OUT/setup.log" ||
    { log "qwenpt: editable install failed (above); running it from the checkout"; export PYTHONPATH=$PWD${PYTHONPATH:+:$PYTHONPATH}; }

TE_SDIST=$(ls "$WHEELS"/transformer_engine_torch-*.tar.gz 2>/dev/null | head -1)
NVCC=$(command -v nvcc || ls "${CUDA_HOME:-/usr/local/cuda}/bin/nvcc" 2>/dev/null || true)
if [ -z "$TE_SDIST" ]; then
    log "Transformer Engine: not carried (fetch_wheels.sh without --te): the SDPA spec runs"
elif [ -z "$NVCC" ]; then
    log "Transformer Engine: its PyTorch extension is source only on PyPI and needs nvcc, which this machine lacks: the SDPA spec runs"
else
    log "Transformer Engine: building $(basename "$TE_SDIST") with $NVCC ($(nproc) jobs, limit ${TE_BUILD_TIMEOUT:-1200} s)"
    start=$(date +%s)
    if MAX_JOBS=$(nproc) NVTE_FRAMEWORK=pytorch timeout "${TE_BUILD_TIMEOUT:-1200}" \
        "${PIP[@]}" --no-build-isolation "$TE_SDIST" >> "$OUT/setup.log" 2>&1; then
        log "Transformer Engine: built and installed in $(( $(date +%s) - start )) s"
    else
        log "Transformer Engine: build failed or passed the limit after $(( $(date +%s) - start )) s (see above): the SDPA spec runs"
        "$PY" -m pip uninstall -y -q transformer_engine_torch transformer_engine 2>/dev/null
    fi
fi
"$PY" - <<'PY' 2>&1 | grep -v -i warn | tee -a "$OUT/setup.log"
import platform, torch, megatron.core
from qwenpt.models.builder import use_transformer_engine
try:
    import transformer_engine
    te = transformer_engine.__version__
except ImportError:
    te = None
print(f"python {platform.python_version()}, torch {torch.__version__} (CUDA {torch.version.cuda}), megatron-core "
      f"{megatron.core.__version__}, transformer-engine {te}; {torch.cuda.device_count()} x {torch.cuda.get_device_name()}; "
      f"layer spec: {'Transformer Engine' if use_transformer_engine() else 'SDPA'}")
PY

# --- tests ---------------------------------------------------------------------------------------------
if [ -z "${SKIP_TESTS:-}" ]; then
    log "tests/gpu"
    timeout "${TEST_TIMEOUT:-0}" "$PY" -m pytest -q -m gpu tests/gpu -rs -s --junitxml="$OUT/gpu_tests.xml" 2>&1 | tee "$OUT/gpu_tests.log"
    [ "${PIPESTATUS[0]}" = 124 ] && log "tests/gpu: stopped after TEST_TIMEOUT=$TEST_TIMEOUT s"
fi

# --- benchmark -----------------------------------------------------------------------------------------
if [ -z "${SKIP_BENCH:-}" ]; then
    FP8=$("$PY" -c "import torch; from qwenpt.models.builder import use_transformer_engine as te
print('hybrid' if te() and torch.cuda.get_device_capability() >= (8, 9) else '')" 2>/dev/null)
    for pair in ${MICRO_BATCHES:-qwen2.5_1.5b:2 qwen2.5_0.5b:4}; do
        model=${pair%%:*} mbs=${pair##*:}
        for fp8 in "" $FP8; do
            log "bench/gpu_mfu.py $model micro-batch $mbs ${fp8:+fp8 $fp8}"
            timeout "${BENCH_TIMEOUT:-0}" "$PY" bench/gpu_mfu.py --model "$model" --micro-batch "$mbs" \
                --global-batch "${GLOBAL_BATCH:-16}" --steps "${STEPS:-20}" --warmup "${WARMUP:-5}" \
                --repeats "${REPEATS:-1}" --profile "${PROFILE:-0}" --document-mask "${DOCUMENT_MASK:-both}" ${fp8:+--fp8 $fp8} \
                ${MEGATRON_LM:+--megatron-lm "$MEGATRON_LM"} --out "$OUT/gpu_mfu.json" \
                --workdir "$OUT/bench_${model}_mbs${mbs}${fp8:+_fp8}" 2>&1 | grep -v -i warn | tail -12 | tee -a "$OUT/setup.log"
            [ "${PIPESTATUS[0]}" = 124 ] && log "bench: stopped after BENCH_TIMEOUT=$BENCH_TIMEOUT s"
        done
    done
fi
log "done: results in $OUT"
