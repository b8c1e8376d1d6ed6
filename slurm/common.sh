# Shared by slurm/*.sh (sourced, not run). One torchrun per node under srun, rendezvous from SLURM_*,
# checkpoint-and-requeue on Slurm's warning signal, and a dry-run mode.
#
# Knobs (environment, all optional):
#   QWENPT_ROOT       the qwenpt checkout (default: the directory sbatch was called from)
#   QWENPT_CONTAINER  a container image: srun runs in it through pyxis (--container-image), the checkout
#                     mounted at the same path; otherwise
#   QWENPT_VENV       a virtualenv to activate on every node (default: $QWENPT_ROOT/.venv if present)
#   QWENPT_RUNS       where runs and their checkpoints go (default: $QWENPT_ROOT/runs; a shared file system)
#   GPUS_PER_NODE     default 8;  MASTER_PORT  default 29500
#   NCCL_*            anything set before sbatch wins over the defaults below
#   QWENPT_HANG_REQUEUES  how often a job whose training hung (train.watchdog) is requeued (default 2)
#   QWENPT_DRY_RUN=1  print the srun and per-node torchrun/train.py command lines, check the layout with
#                     the planner for this many GPUs, and exit (works without Slurm, with SLURM_* faked)

QWENPT_ROOT=${QWENPT_ROOT:-${SLURM_SUBMIT_DIR:-$(pwd)}}
QWENPT_RUNS=${QWENPT_RUNS:-$QWENPT_ROOT/runs}
GPUS_PER_NODE=${GPUS_PER_NODE:-8}
MASTER_PORT=${MASTER_PORT:-29500}
export QWENPT_ROOT QWENPT_RUNS

# The first host of a Slurm node list ("gpu[001-016,020]" -> gpu001): scontrol when there is one.
first_host() {
    if command -v scontrol >/dev/null 2>&1 && [ -z "${QWENPT_DRY_RUN:-}" ]; then
        scontrol show hostnames "$1" | head -n 1
    elif [[ $1 =~ ^([^,\[]+)\[([^],-]+) ]]; then
        echo "${BASH_REMATCH[1]}${BASH_REMATCH[2]}"
    else
        echo "${1%%,*}"
    fi
}

qwenpt_environment() {
    cd "$QWENPT_ROOT"
    [ -n "${QWENPT_DRY_RUN:-}" ] || mkdir -p "$QWENPT_RUNS" logs
    if [ -z "${QWENPT_CONTAINER:-}" ]; then
        local venv=${QWENPT_VENV:-$QWENPT_ROOT/.venv}
        if [ -f "$venv/bin/activate" ]; then
            # shellcheck disable=SC1091
            source "$venv/bin/activate"
        fi
    fi
    # InfiniBand for inter-node NCCL, the Ethernet interface only for bootstrap
    export NCCL_IB_DISABLE=${NCCL_IB_DISABLE:-0}
    export NCCL_SOCKET_IFNAME=${NCCL_SOCKET_IFNAME:-^lo,docker}
    export NCCL_DEBUG=${NCCL_DEBUG:-WARN}
    export TORCH_NCCL_ASYNC_ERROR_HANDLING=${TORCH_NCCL_ASYNC_ERROR_HANDLING:-1}
    # megatron-core's TP/SP communication overlap relies on one CUDA work queue per device
    export CUDA_DEVICE_MAX_CONNECTIONS=${CUDA_DEVICE_MAX_CONNECTIONS:-1}
    export PYTORCH_CUDA_ALLOC_CONF=${PYTORCH_CUDA_ALLOC_CONF:-expandable_segments:True}
    export OMP_NUM_THREADS=${OMP_NUM_THREADS:-8}
}

# qwenpt_launch OVERRIDE...: train.py with these Hydra overrides on every node of the allocation.
qwenpt_launch() {
    local nnodes=${SLURM_NNODES:?not inside a Slurm allocation (SLURM_NNODES is unset)}
    local job=${SLURM_JOB_ID:?SLURM_JOB_ID is unset}
    local master
    master=$(first_host "${SLURM_JOB_NODELIST:?SLURM_JOB_NODELIST is unset}")
    # the batch script touches this on Slurm's warning signal; training checkpoints and exits
    local stop_file="$QWENPT_RUNS/.stop-$job"
    local torchrun=(
        torchrun --nnodes="$nnodes" --nproc-per-node="$GPUS_PER_NODE"
        --rdzv-backend=c10d --rdzv-endpoint="$master:$MASTER_PORT" --rdzv-id="$job" --max-restarts=0
        train.py "$@" "train.stop_file=$stop_file"
    )
    local srun=(srun --nodes="$nnodes" --ntasks-per-node=1 --kill-on-bad-exit=1 --cpu-bind=none)
    if [ -n "${QWENPT_CONTAINER:-}" ]; then
        srun+=(--container-image="$QWENPT_CONTAINER" --container-mounts="$QWENPT_ROOT:$QWENPT_ROOT,$QWENPT_RUNS:$QWENPT_RUNS"
               --container-workdir="$QWENPT_ROOT")
    fi

    if [ -n "${QWENPT_DRY_RUN:-}" ]; then
        echo "job $job: $nnodes nodes x $GPUS_PER_NODE GPUs, rendezvous $master:$MASTER_PORT"
        echo "${srun[*]} ${torchrun[*]}"
        local n
        for ((n = 0; n < nnodes; n++)); do
            echo "node $n: ${torchrun[*]}"
        done
        python -m qwenpt.plan "$@" --gpus "$((nnodes * GPUS_PER_NODE))"
        return
    fi

    local requeue=0 started="$QWENPT_RUNS/.started-$job"
    trap 'echo "$(date -Is) warning signal: asking training to checkpoint and stop"; touch "$stop_file"; requeue=1' USR1
    # Dated a second back: file times tick coarsely (a few ms), so a HANG written within the same
    # tick would not be -newer than a marker touched now.
    touch -d "@$(($(date +%s) - 1))" "$started"
    "${srun[@]}" "${torchrun[@]}" &
    local pid=$! rc=0
    while true; do
        wait "$pid" && rc=0 || rc=$?
        kill -0 "$pid" 2>/dev/null || break  # wait returned early for the trap: keep waiting
    done
    # A hang: train.watchdog dumped every rank's stack, wrote <run_dir>/HANG and exited non-zero.
    # Requeue to resume from the last checkpoint, at most QWENPT_HANG_REQUEUES times per job.
    local hang
    hang=$(find "$QWENPT_RUNS" -maxdepth 4 -name HANG -newer "$started" 2>/dev/null | head -n 1)
    rm -f "$started"
    if [ "$requeue" = 0 ] && [ "$rc" != 0 ] && [ -n "$hang" ]; then
        if [ "${SLURM_RESTART_COUNT:-0}" -lt "${QWENPT_HANG_REQUEUES:-2}" ]; then
            echo "$(date -Is) training hung ($hang; stacks in hang_rank*.txt beside it)"
            requeue=1
        else
            echo "$(date -Is) training hung again ($hang) after ${SLURM_RESTART_COUNT} requeues; not requeueing"
        fi
    fi
    if [ "$requeue" = 1 ]; then
        echo "$(date -Is) training stopped (exit $rc); requeueing job $job to resume from its checkpoint"
        scontrol requeue "$job"
    fi
    return "$rc"
}
