#!/bin/bash
# The Motif recipe as a chain of dependent Slurm jobs (each starts only if the one before it
# succeeded: sbatch --dependency=afterok):
#   import (HF -> Megatron) -> grow (LlamaPro depth + MSG width + vocabulary) -> train
#   (examples/slurm/pretrain.sbatch) -> finalize (MSG masks at 1 removed) -> export (-> HF)
# Conversion and growth are CPU jobs on one node; training takes the GPU nodes.
#
#   HF_DIR=models/Llama-3-70B OUT=runs/motif TOKENIZER=tok/llama3-ko \
#   DATA="0.9 data/ko_text_document 0.1 data/en_text_document" CONFIG=examples/configs/motif.yaml \
#   GROW="--depth-add 16 --hidden-size 9216 --ffn-hidden-size 30720 --num-attention-heads 72 \
#         --num-query-groups 8" TRAIN_SBATCH="--nodes=16" bash examples/slurm/recipe.sh
#
# Prints one job id per step and the last one on its own line; `squeue -u $USER` shows the chain.
# Every step writes under $OUT (base/, grown/, trained/, final/, hf/). Extra sbatch options for
# every job: SBATCH_ARGS; for the training job only: TRAIN_SBATCH (nodes, GPUs, time); trainer
# flags: TRAIN_ARGS. FROM=grow|train|finalize|export starts the chain at that step on what the
# steps before it left in $OUT (after a failed job, say); a training job requeues itself until
# its run is complete, and finalize and export refuse a checkpoint that stopped early.
set -euo pipefail
cd "$(dirname "$0")/../.."

PYTHON=${PYTHON:-.venv/bin/python}
FROM=${FROM:-import}
case " import grow train finalize export " in
*" $FROM "*) ;;
*) echo "recipe.sh: FROM=$FROM is not a step (import grow train finalize export)" >&2 && exit 2 ;;
esac
: "${OUT:?set OUT to the folder the recipe writes}"
case "$FROM" in import) : "${HF_DIR:?set HF_DIR to the HF base model directory}" ;; esac
case "$FROM" in import | grow | train) : "${DATA:?set DATA to the --data-path blend}" ;; esac
GROW=${GROW:-}
if [ -n "${TOKENIZER:-}" ]; then GROW="$GROW --tokenizer $TOKENIZER --init ${INIT:-subword-mean}"; fi
read -r -a SBATCH_EXTRA <<<"${SBATCH_ARGS:-}"
read -r -a TRAIN_EXTRA <<<"${TRAIN_SBATCH:-}"
read -r -a TRAIN_FLAGS <<<"${TRAIN_ARGS:-}"
mkdir -p "$OUT/logs"

submit() { # submit NAME DEPENDENCY sbatch-args... -> job id
    local name=$1 after=$2
    shift 2
    local dep=()
    if [ -n "$after" ]; then dep=(--dependency="afterok:$after" --kill-on-invalid-dep=yes); fi
    sbatch --parsable --job-name="motif-$name" --output="$OUT/logs/$name-%j.out" \
        "${dep[@]}" "${SBATCH_EXTRA[@]}" "$@" | cut -d';' -f1
}
cpu_step() { # cpu_step NAME DEPENDENCY command...
    local name=$1 after=$2
    shift 2
    submit "$name" "$after" --nodes=1 --ntasks=1 --wrap="$(printf '%q ' "$@")"
}

STARTED=
from_here() { # from_here STEP: true from the step FROM names on
    if [ "$1" = "$FROM" ]; then STARTED=1; fi
    [ -n "$STARTED" ]
}

import= grow= train= final=
if from_here import; then
    import=$(cpu_step import "" "$PYTHON" tools/convert_hf.py import --hf-dir "$HF_DIR" \
        --out "$OUT/base")
fi
if from_here grow; then
    # shellcheck disable=SC2086
    grow=$(cpu_step grow "$import" "$PYTHON" tools/expand_checkpoint.py --load "$OUT/base" \
        --save "$OUT/grown" $GROW)
fi
if from_here train; then
    train=$(LOAD="$OUT/grown" SAVE="$OUT/trained" DATA="$DATA" CONFIG="${CONFIG:-}" \
        PYTHON="$PYTHON" submit train "$grow" --export=ALL "${TRAIN_EXTRA[@]}" \
        examples/slurm/pretrain.sbatch "${TRAIN_FLAGS[@]}")
fi
if from_here finalize; then
    final=$(cpu_step finalize "$train" "$PYTHON" tools/expand_checkpoint.py --load "$OUT/trained" \
        --save "$OUT/final" --finalize)
fi
export_=$(cpu_step export "$final" "$PYTHON" tools/convert_hf.py export --load "$OUT/final" \
    --out "$OUT/hf")
echo "import=$import grow=$grow train=$train finalize=$final export=$export_"
echo "$export_"
