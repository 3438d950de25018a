#!/usr/bin/env bash
# The synthetic benchmark, in one command: every method, 3 seeds, the three protocols of the real
# benchmark, on the tiny CLIP pretrained by this repository (assets/tiny_clip_synthetic.pt, remade
# by tools/pretrain_tiny_clip.py) and the synthetic datasets (generated on first use, no download):
#
#   bash scripts/synthetic_benchmark.sh   # writes docs/synthetic_results.md and the README's section
#
#   base-to-new  synthetic_objects (64 colour x shape classes; new = unseen colour-shape combinations)
#   cross-dataset  synthetic_objects -> synthetic_patterns (another concept family: textures)
#   domain generalisation  synthetic_objects (photo) -> its sketch / cartoon / painting versions
#
# Every run goes through scripts/compare.sh, i.e. each method's official config and scripts, with a
# common short schedule for the tiny model passed as KEY VALUE opts (they win over the configs):
# 16 shots, SYN_EPOCHS epochs (default 4, the first a warm-up), batch 8, 32x32 inputs, the deep-prompt
# methods' depths capped at the tiny model's 3 layers (TINY_DEPTH_OPTS, scripts/_common.sh), random-resized crops of at least half the image
# (objects fill a good part of a 32-pixel image).  The time of the last run is in the report.
#
# Environment: SEEDS (default 1,2,3), TRAINERS (default all ten), SYN_EPOCHS (default 4),
#   JOBS (default 2 on a machine with 2 or more cores: GOPro runs beside the other methods; 1: one at a time),
#   DATA (default <repo>/data), OUTPUT (default <repo>/output/synthetic_benchmark),
#   RESULTS (default <repo>/docs/synthetic_results.md; the tables are also under $OUTPUT/compare/),
#   README_FILE (default <repo>/README.md: its section between the synthetic-results markers is
#   rewritten with the same report; empty: leave the README alone).
# Finished runs are skipped, so an interrupted benchmark resumes where it stopped.
source "$(dirname "${BASH_SOURCE[0]}")/_common.sh"  # REPO_ROOT, PYTHON, TINY_DEPTH_OPTS
SEEDS="${SEEDS:-1,2,3}"
TRAINERS="${TRAINERS:-ZeroshotCLIP,CoOp,CoCoOp,KgCoOp,ProGrad,VPT,IVLP,MaPLe,PromptSRC,GOPro}"
SYN_EPOCHS="${SYN_EPOCHS:-4}"
JOBS="${JOBS:-$(( $(getconf _NPROCESSORS_ONLN) >= 2 ? 2 : 1 ))}"
export DATA="${DATA:-$REPO_ROOT/data}"
export OUTPUT="${OUTPUT:-$REPO_ROOT/output/synthetic_benchmark}"
RESULTS="${RESULTS:-$REPO_ROOT/docs/synthetic_results.md}"
README_FILE="${README_FILE-$REPO_ROOT/README.md}"
# CoOp's cross-dataset runs use main.sh with 16 context tokens; start them from "a photo of a" as
# its base-to-new config does (random 16-token contexts need far longer schedules)
export COOP_XD_CFG="${COOP_XD_CFG:-vit_b16_ep50_ctxv1}"
export XD_SOURCE=synthetic_objects
# one intra-op thread per run: the tiny model's ops are small, and two threads stall badly whenever
# anything else runs on the machine
export OMP_NUM_THREADS="${OMP_NUM_THREADS:-1}"
mkdir -p "$DATA"

OPTS=(
    MODEL.BACKBONE.NAME tiny-synthetic INPUT.SIZE "(32, 32)" INPUT.RRCROP_SCALE "(0.5, 1.0)"
    DATALOADER.NUM_WORKERS 0 DATALOADER.TRAIN_X.BATCH_SIZE 8 DATALOADER.TEST.BATCH_SIZE 200
    DATASET.NUM_SHOTS 16 OPTIM.MAX_EPOCH "$SYN_EPOCHS" "${TINY_DEPTH_OPTS[@]}" TRAIN.PRINT_FREQ 50
)

all_protocols() { # TRAINERS: the three protocols for these trainers (tables printed at the end of each)
    local status=0
    bash "$REPO_ROOT/scripts/compare.sh" base2new synthetic_objects "$SEEDS" "$1" "${OPTS[@]}" || status=1
    bash "$REPO_ROOT/scripts/compare.sh" xd synthetic_objects,synthetic_patterns "$SEEDS" "$1" "${OPTS[@]}" || status=1
    bash "$REPO_ROOT/scripts/compare.sh" dg \
        synthetic_objects,synthetic_objects_sketch,synthetic_objects_cartoon,synthetic_objects_painting \
        "$SEEDS" "$1" "${OPTS[@]}" || status=1
    return $status
}

start=$(date +%s)
status=0
side_by_side=1
resumed=()
# runs finished by an earlier invocation are skipped: then the time below is not the whole benchmark's
[[ -d "$OUTPUT/base2new" || -d "$OUTPUT/synthetic_objects" || -d "$OUTPUT/evaluation" ]] && resumed=(--resumed)
# JOBS=2: GOPro (three views per image: about half of all the training time) runs beside the other
# methods, each worker on its own core; their logs go to $OUTPUT/logs/.  The datasets are generated
# once (under a lock) by whichever run needs them first.  A last sequential pass, in which every run
# is already finished and skipped, prints the tables.
IFS=, read -r -a trainer_list <<<"$TRAINERS"
others=()
for trainer in "${trainer_list[@]}"; do [[ "$trainer" == GOPro ]] || others+=("$trainer"); done
if ((JOBS > 1)) && ((${#others[@]} > 0)) && ((${#others[@]} < ${#trainer_list[@]})); then
    side_by_side=2
    mkdir -p "$OUTPUT/logs"
    echo "Running GOPro and $(IFS=,; echo "${others[*]}") side by side (JOBS=$JOBS); logs: $OUTPUT/logs/"
    all_protocols GOPro >"$OUTPUT/logs/GOPro.log" 2>&1 &
    gopro_pid=$!
    all_protocols "$(IFS=,; echo "${others[*]}")" >"$OUTPUT/logs/others.log" 2>&1 || status=1
    wait "$gopro_pid" || status=1
    ((status == 0)) || echo "Some runs failed: see the FAILED lines in $OUTPUT/logs/*.log" >&2
fi
all_protocols "$TRAINERS" || status=1
minutes=$(( ($(date +%s) - start + 59) / 60 ))
if [[ -n "${DRY_RUN:-}" ]]; then
    echo "(dry run) then: write $RESULTS"
    exit $status
fi

(cd "$REPO_ROOT" && "$PYTHON" -m gopro_prompts.tools.synthetic_report "$OUTPUT/compare" --results "$RESULTS" --readme "$README_FILE" \
    --minutes "$minutes" --seeds "$SEEDS" --epochs "$SYN_EPOCHS" --cores "$(getconf _NPROCESSORS_ONLN)" \
    --jobs "$side_by_side" "${resumed[@]}") || status=1
exit $status
