#!/bin/bash
# One point of a Hydra sweep per array task (the grid: hydra.sweeper.params of the experiment).
#   n=$(python -m qwenpt.sweep count +experiment=size_tokens)
#   sbatch --array=0-$((n - 1))%4 slurm/sweep.sh +experiment=size_tokens data=<your blend>
# Task i runs multirun job i (python -m qwenpt.sweep list shows them) on its own node(s); each point
# has its own run directory, so a requeued or re-submitted task resumes where it stopped.
#SBATCH --job-name=qwenpt-sweep
#SBATCH --nodes=1
#SBATCH --ntasks-per-node=1
#SBATCH --gpus-per-node=8
#SBATCH --cpus-per-task=64
#SBATCH --mem=0
#SBATCH --exclusive
#SBATCH --time=24:00:00
#SBATCH --signal=B:USR1@600
#SBATCH --requeue
#SBATCH --open-mode=append
#SBATCH --output=logs/%x-%A_%a.out
set -euo pipefail
source "${QWENPT_ROOT:-${SLURM_SUBMIT_DIR:-$(pwd)}}/slurm/common.sh"
qwenpt_environment
index=${SLURM_ARRAY_TASK_ID:?submit with sbatch --array=0-N}
read -r -a point <<< "$(python -m qwenpt.sweep point "$index" "$@")"
echo "sweep point $index: ${point[*]}"
qwenpt_launch "$@" "${point[@]}" hydra.mode=RUN
