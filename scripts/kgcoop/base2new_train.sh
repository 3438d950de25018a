#!/usr/bin/env bash
# KgCoOp, base-to-new generalisation: train on the base classes (SHOTS-shot).
#
#   bash scripts/kgcoop/base2new_train.sh DATASET SEED [KEY VALUE ...]
#
# Output: $OUTPUT/base2new/train_base/DATASET/shots_16/KgCoOp/CFG/seedSEED
# DATASET: a configs/datasets/ file name without .yaml (oxford_pets, imagenet, synthetic_shapes, ...).
# The options of KgCoOp's scripts/base2new_train.sh: N_CTX 4, CSC False, class token at the end,
# knowledge-guidance weight W 8.0 (KgCoOp's own scripts also put W in the folder name; ours do not).
# Environment: DATA (required: the datasets folder), OUTPUT (default <repo>/output), SHOTS (default 16),
#   CFG (default vit_b16_ep100_ctxv1), PYTHON (default python), DRY_RUN=1 (print the command only).
# Extra KEY VALUE arguments are yacs opts passed to train.py after the script's own (so they win), e.g.
#   DATA=/tmp/data bash scripts/kgcoop/base2new_train.sh oxford_pets 1 MODEL.BACKBONE.NAME tiny INPUT.SIZE "(32, 32)" OPTIM.MAX_EPOCH 1
# A finished run is skipped; an unfinished one resumes (see scripts/_common.sh).
source "$(dirname "${BASH_SOURCE[0]}")/../_common.sh"
SCRIPT_OPTS=(TRAINER.COOP.N_CTX 4 TRAINER.COOP.CSC False TRAINER.COOP.W 8.0 TRAINER.COOP.CLASS_TOKEN_POSITION end)
run_protocol base2new_train KgCoOp "${CFG:-vit_b16_ep100_ctxv1}" "$@"
