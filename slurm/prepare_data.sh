#!/bin/bash
# Prepare a corpus on a Slurm cluster. Run it where you run sbatch; it submits the jobs:
#   PREP_TASKS=64 slurm/prepare_data.sh 'corpus/**/*.jsonl.zst' --output /shared/data/tok --tokenizer qwen2 \
#       --dedup --near-dedup --quality all
# The arguments are `python -m data_pipeline prepare`'s (checked here, before anything is submitted).
#   1. an array of PREP_TASKS `prepare` tasks; task i takes the input files j with j % PREP_TASKS == i
#   2. with --near-dedup, after every task of 1 succeeded: an array of `buckets` tasks (the LSH bands)
#   3. after that: one `merge` writing the datasets, rejects.jsonl and manifest.parquet, byte-identical
#      to a one-machine `prepare` with the same arguments
# A failed task leaves merge pending (afterok). Submit again with the same arguments: finished files
# are skipped in seconds, so only the failed task's unfinished file is redone; or PREP_ARRAY=3,7 to
# run only those tasks again. --output must be on a file system every node sees.
#
# Knobs (environment): PREP_TASKS (16), PREP_ARRAY (which tasks; default 0-(PREP_TASKS-1)),
#   PREP_CPUS (CPUs per prepare task, 8), PREP_MEM (32G), PREP_TIME (24:00:00),
#   SBATCH_EXTRA (more sbatch options for every job, e.g. "--partition=cpu --account=lm"),
#   QWENPT_ROOT / QWENPT_VENV / QWENPT_CONTAINER as for training (slurm/common.sh),
#   QWENPT_DRY_RUN=1: print the plan (files per task) and the sbatch commands, submit nothing.
set -euo pipefail
source "${QWENPT_ROOT:-${SLURM_SUBMIT_DIR:-$(pwd)}}/slurm/common.sh"
qwenpt_environment
exec 3>&1  # the dry run's printout (submit's stdout is the job id)

tasks=${PREP_TASKS:-16}
array=${PREP_ARRAY:-0-$((tasks - 1))}
cpus=${PREP_CPUS:-8}
read -r -a extra <<< "${SBATCH_EXTRA:-}"
common=(--parsable --cpus-per-task="$cpus" --mem="${PREP_MEM:-32G}" --time="${PREP_TIME:-24:00:00}" "${extra[@]}")

# the plan: validates the arguments, prints files and MB per task, ends with "output: ..." and "near_dedup: 0|1"
plan=$(python -m data_pipeline plan "$tasks" "$@")
echo "$plan" | grep -v -e '^output: ' -e '^near_dedup: '
out=$(sed -n 's/^output: //p' <<< "$plan")
near=$(sed -n 's/^near_dedup: //p' <<< "$plan")

quoted=$(printf '%q ' "$@")
prepare="python -m data_pipeline prepare $quoted--num-tasks $tasks --no-progress"  # --workers: as the task's CPUs and cleaning decide
buckets="python -m data_pipeline buckets $(printf '%q' "$out") --num-tasks $tasks"
merge="python -m data_pipeline merge $(printf '%q' "$out")"

submit() {  # submit NAME SBATCH-ARGS... -- COMMAND: prints the job id (a placeholder in a dry run)
    local name=$1
    shift
    local args=()
    while [ "$1" != "--" ]; do args+=("$1"); shift; done
    shift
    local cmd=(sbatch "${common[@]}" --job-name="$name" --output="logs/%x-%A_%a.out" "${args[@]}" --wrap="$*")
    if [ -n "${QWENPT_DRY_RUN:-}" ]; then
        printf '%q ' "${cmd[@]}" >&3
        echo >&3
        echo "<$name>"
    else
        "${cmd[@]}"
    fi
}

prep_job=$(submit qwenpt-prepare --array="$array" -- "$prepare")
last=$prep_job
if [ "$near" = 1 ]; then
    last=$(submit qwenpt-buckets --array=0-$((tasks - 1)) --dependency="afterok:$prep_job" -- "$buckets")
fi
merge_job=$(submit qwenpt-merge --cpus-per-task=2 --dependency="afterok:$last" -- "$merge")
stages="prepare array $prep_job (tasks $array of $tasks)"
[ "$near" = 1 ] && stages+=", buckets array $last"
echo "${QWENPT_DRY_RUN:+dry run, would have }submitted: $stages, merge $merge_job -> $out"
