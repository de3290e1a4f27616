# The launch every multi-rank Slurm job of the project shares: examples/slurm/pretrain.sbatch and
# the step scripts of tools/run_recipe.py --slurm source this file and call
#
#   launch SCRIPT ARGS...     # every rank of the job runs $PYTHON SCRIPT ARGS
#
# Settings from the environment: PYTHON (default .venv/bin/python), LAUNCHER=srun (default: one
# task per rank started by srun) or torchrun (one torchrun per node, c10d rendezvous on the
# first node, SAVE_GRACE seconds for its workers to save, default 270), SAVE (the checkpoint root
# the run writes, when it does: how a stop is told from a failure), EXIT_WAIT (default 60).
#
# Signals: the batch shell traps TERM/USR1/INT and passes them to the ranks through Slurm
# (scancel --signal, every process of the job's steps), never to srun, which answers its own
# SIGTERM by killing the ranks ("forcing job termination"). A run stopped before --train-iters
# saves and exits 3 (the trainer's exit status); launch then requeues the job (same id, so jobs
# chained on afterok:ID wait for the real end) and exits 3. Ranks stop together, so srun waits
# EXIT_WAIT seconds after the first one exits before ending the others and reports their own
# status (3, or 2 for a NaN); torchrun turns a worker's 3 into 1, so a failure after this job
# published the save of a stop (its loop state says so) counts as a stop too. Status 2 (bad
# input, a NaN) and crashes never requeue. Otherwise launch returns the ranks' status.
# shellcheck shell=bash

PYTHON=${PYTHON:-.venv/bin/python}
LAUNCHER=${LAUNCHER:-srun}
STOPPED_EARLY=3 # the trainer's status for a run cut before --train-iters (README); 2 = bad input
STEP=
# srun answers its own SIGTERM or SIGINT by killing the ranks ("forcing job termination"), so a
# trapped signal goes to the ranks through Slurm (every process of the job's steps), not to srun
forward() {
    if [ -n "${SLURM_JOB_ID:-}" ]; then
        scancel --signal="$1" "$SLURM_JOB_ID" 2>/dev/null || true
    elif [ -n "$STEP" ]; then kill -s "$1" "$STEP" 2>/dev/null || true; fi
}
# shellcheck disable=SC2317  # called through "$@"
run_step() { # run_step command...: in the background, waited through trapped signals
    "$@" &
    STEP=$!
    while kill -0 "$STEP" 2>/dev/null; do wait "$STEP" || true; done
    wait "$STEP"
}
tracker() { cat "${SAVE:-/nonexistent}/latest_checkpointed_iteration.txt" 2>/dev/null || echo none; }
stop_saved() { # $SAVE's latest checkpoint is the save of a stop (not of a run that failed later)
    "$PYTHON" -c 'import sys; from motif_megatron.checkpoint.dist import stop_reason
sys.exit(0 if stop_reason(sys.argv[1]) else 1)' "$SAVE"
}
# torchrun reports any worker's status as 1: a failure after this job published the save of a
# stop is a stop too (a NaN stop leaves a periodic save as the latest; a crash is not requeued)
stopped_early() {
    [ "$1" -eq "$STOPPED_EARLY" ] || { [ "$1" -ne 0 ] && [ "$(tracker)" != "$BEFORE" ] \
        && stop_saved; }
}

launch() { # launch SCRIPT ARGS...: see the top of this file
    local status per_node master
    for sig in TERM USR1 INT; do trap "forward $sig" "$sig"; done
    export OMP_NUM_THREADS=${OMP_NUM_THREADS:-${SLURM_CPUS_PER_TASK:-1}}
    # NCCL reports which rank failed instead of hanging until the time limit
    export TORCH_NCCL_ASYNC_ERROR_HANDLING=${TORCH_NCCL_ASYNC_ERROR_HANDLING:-1}
    # the ranks exit with their own status; one that crashed takes the others down later
    local exit=(--kill-on-bad-exit=0 --wait="${EXIT_WAIT:-60}")
    BEFORE=$(tracker)
    set +e
    if [ "$LAUNCHER" = torchrun ]; then
        master=$(scontrol show hostnames "$SLURM_JOB_NODELIST" | head -n 1)
        per_node=${GPUS_PER_NODE:-${SLURM_GPUS_ON_NODE:-${SLURM_NTASKS_PER_NODE:-1}}}
        # one torchrun per node: --ntasks too, or srun inherits the job's task count
        run_step srun --nodes="$SLURM_NNODES" --ntasks="$SLURM_NNODES" --ntasks-per-node=1 \
            "${exit[@]}" "$(dirname "$PYTHON")/torchrun" \
            --nnodes="$SLURM_NNODES" --nproc-per-node="$per_node" --rdzv-backend=c10d \
            --rdzv-endpoint="$master:${MASTER_PORT:-$((20000 + SLURM_JOB_ID % 20000))}" \
            --rdzv-id="$SLURM_JOB_ID" --signals-to-handle=SIGTERM,SIGINT,SIGHUP,SIGQUIT,SIGUSR1 \
            --shutdown-timeout="${SAVE_GRACE:-270}" "$@"
    else
        run_step srun "${exit[@]}" "$PYTHON" "$@"
    fi
    status=$?
    set -e
    if stopped_early "$status" && [ -n "${SLURM_JOB_ID:-}" ]; then
        echo "motif-launch: stopped at iteration $(tracker) before --train-iters; requeueing job $SLURM_JOB_ID"
        scontrol requeue "$SLURM_JOB_ID"
        exit "$STOPPED_EARLY"
    fi
    return "$status"
}
