#!/usr/bin/env bash
# CoOp cross-dataset / domain generalisation: evaluate the ImageNet-trained models on DATASET
# (full test split, all classes), one evaluation per seed.
#
#   bash scripts/coop/eval.sh DATASET CFG [KEY VALUE ...]
#
# Model:  $OUTPUT/imagenet/CoOp/CFG_16shots/nctx16_cscFalse_ctpend/seedSEED (made by main.sh)
# Output: $OUTPUT/evaluation/CoOp/CFG_16shots/nctx16_cscFalse_ctpend/DATASET/seedSEED
# The model of epoch LOAD_EPOCH is loaded (default: OPTIM.MAX_EPOCH from the extra opts, else the config's,
# e.g. 50 for vit_b16_ep50).
# Environment: DATA (required), OUTPUT (default <repo>/output), SEEDS (default "1 2 3"), SHOTS (16), NCTX (16),
#   CSC (False), CTP (end), XD_SOURCE (imagenet), LOAD_EPOCH, PYTHON (python), DRY_RUN=1 (print the commands only).
# Extra KEY VALUE arguments are yacs opts passed to train.py after the script's own (so they win).
# A finished evaluation is skipped; an unfinished one runs again (see scripts/_common.sh).
source "$(dirname "${BASH_SOURCE[0]}")/../_common.sh"
usage 2 "DATASET CFG" "$@"
DATASET=$1 CFG=$2
shift 2
NCTX="${NCTX:-16}" CSC="${CSC:-False}" CTP="${CTP:-end}"
CFG_FILE="$(trainer_config CoOp "$CFG")"
EPOCH="$(load_epoch "$CFG_FILE" "$@")"
TAIL="CoOp/${CFG}_${SHOTS}shots/nctx${NCTX}_csc${CSC}_ctp${CTP}"
FOLDER="$(dataset_folder "$DATASET" "$@")"  # DATASET, or the display name of your own images
SOURCE_FOLDER="$(dataset_folder "${XD_SOURCE:-imagenet}" "$@")"
for SEED in ${SEEDS:-1 2 3}; do
    check_seed "$SEED"
    eval_job CoOp "$CFG" "$DATASET" "$SEED" "$(output_root)/evaluation/${TAIL}/${FOLDER}/seed${SEED}" \
        "$(output_root)/${SOURCE_FOLDER}/${TAIL}/seed${SEED}" "$EPOCH" \
        TRAINER.COOP.N_CTX "$NCTX" TRAINER.COOP.CSC "$CSC" TRAINER.COOP.CLASS_TOKEN_POSITION "$CTP" "$@"
done
