#!/bin/bash
# Qwen3.5-35B-A3B (hybrid Gated DeltaNet + MoE, expert parallel) pretraining: 2 nodes x 8 GPUs, layout in
# conf/parallel/qwen3.5_35b_a3b.yaml, run settings in
# conf/experiment/pretrain_qwen3.5_35b_a3b.yaml. Submit from the checkout:
#   sbatch slurm/pretrain_qwen3.5_35b_a3b.sh data=<your blend> [more Hydra overrides]
# (Qwen3.6-35B-A3B, the same shapes: add model=qwen3.6_35b_a3b)
# Check the layout first, anywhere: QWENPT_DRY_RUN=1 SLURM_NNODES=2 SLURM_JOB_ID=1 \
#   SLURM_JOB_NODELIST='gpu[001-002]' bash slurm/pretrain_qwen3.5_35b_a3b.sh
# 15 minutes before the time limit Slurm signals the script: training checkpoints, exits, and the job
# is requeued; the requeued job resumes from that checkpoint (same run directory).
#SBATCH --job-name=pretrain-qwen3.5_35b_a3b
#SBATCH --nodes=2
#SBATCH --ntasks-per-node=1
#SBATCH --gpus-per-node=8
#SBATCH --cpus-per-task=64
#SBATCH --mem=0
#SBATCH --exclusive
#SBATCH --time=48:00:00
#SBATCH --signal=B:USR1@900
#SBATCH --requeue
#SBATCH --open-mode=append
#SBATCH --output=logs/%x-%j.out
set -euo pipefail
source "${QWENPT_ROOT:-${SLURM_SUBMIT_DIR:-$(pwd)}}/slurm/common.sh"
qwenpt_environment
qwenpt_launch +experiment=pretrain_qwen3.5_35b_a3b "$@"
