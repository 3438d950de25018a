#!/usr/bin/env bash
# CoOp few-shot training (one run per seed).
#
#   bash scripts/coop/main.sh DATASET CFG CTP NCTX SHOTS CSC [KEY VALUE ...]
#
#   DATASET  a configs/datasets/ file name without .yaml (oxford_pets, imagenet, synthetic_shapes, ...)
#   CFG      a configs/trainers/CoOp/ file name without .yaml (rn50, vit_b16_ep50, ...)
#   CTP      class token position: end, middle or front
#   NCTX     number of context tokens
#   SHOTS    few-shot K
#   CSC      class-specific context: True or False
#
# Output: $OUTPUT/DATASET/CoOp/CFG_SHOTSshots/nctxNCTX_cscCSC_ctpCTP/seedSEED for each SEED.
# Environment: DATA (required: the datasets folder), OUTPUT (default <repo>/output),
#   SEEDS (default "1 2 3"), PYTHON (default python), DRY_RUN=1 (print the commands only).
# Extra KEY VALUE arguments are yacs opts passed to train.py after the script's own (so they win), e.g.
#   DATA=/tmp/data SEEDS=1 bash scripts/coop/main.sh synthetic_shapes vit_b16 end 16 2 False MODEL.BACKBONE.NAME tiny
# A finished run is skipped; an unfinished one resumes (see scripts/_common.sh).
source "$(dirname "${BASH_SOURCE[0]}")/../_common.sh"
usage 6 "DATASET CFG CTP NCTX SHOTS CSC" "$@"
DATASET=$1 CFG=$2 CTP=$3 NCTX=$4 SHOTS=$5 CSC=$6
shift 6
FOLDER="$(dataset_folder "$DATASET" "$@")"  # DATASET, or the display name of your own images
for SEED in ${SEEDS:-1 2 3}; do
    check_seed "$SEED"
    DIR="$(output_root)/${FOLDER}/CoOp/${CFG}_${SHOTS}shots/nctx${NCTX}_csc${CSC}_ctp${CTP}/seed${SEED}"
    train_job CoOp "$CFG" "$DATASET" "$SEED" "$DIR" \
        TRAINER.COOP.N_CTX "$NCTX" TRAINER.COOP.CSC "$CSC" TRAINER.COOP.CLASS_TOKEN_POSITION "$CTP" \
        DATASET.NUM_SHOTS "$SHOTS" "$@"
done
