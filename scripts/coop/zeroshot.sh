#!/usr/bin/env bash
# Zero-shot CLIP (hand-crafted prompt of the dataset) with the backbone and input settings of a CoOp config.
#
#   bash scripts/coop/zeroshot.sh DATASET CFG [KEY VALUE ...]
#
# Output: $OUTPUT/ZeroshotCLIP/CFG/DATASET (no seed: nothing is random)
# Environment: DATA (required), OUTPUT (default <repo>/output), PYTHON (python), DRY_RUN=1 (print the command only).
# Extra KEY VALUE arguments are yacs opts passed to train.py after the script's own (so they win).
# A finished evaluation is skipped; an unfinished one runs again (see scripts/_common.sh).
source "$(dirname "${BASH_SOURCE[0]}")/../_common.sh"
usage 2 "DATASET CFG" "$@"
DATASET=$1 CFG=$2
shift 2
FOLDER="$(dataset_folder "$DATASET" "$@")"  # DATASET, or the display name of your own images
eval_job ZeroshotCLIP "CoOp/${CFG}" "$DATASET" "" "$(output_root)/ZeroshotCLIP/${CFG}/${FOLDER}" "" "" "$@"
