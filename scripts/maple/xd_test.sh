#!/usr/bin/env bash
# MaPLe, cross-dataset / domain generalisation: evaluate the xd_train.sh model on DATASET
# (a target dataset or imagenetv2 / imagenet_sketch / imagenet_a / imagenet_r; full test split, all classes).
#
#   bash scripts/maple/xd_test.sh DATASET SEED [KEY VALUE ...]
#
# Output: $OUTPUT/evaluation/MaPLe/CFG_16shots/DATASET/seedSEED
#   (model from $OUTPUT/imagenet/MaPLe/CFG_16shots/seedSEED)
# XD_SOURCE (default imagenet) names the training dataset.
# The model of epoch LOAD_EPOCH is loaded (default: OPTIM.MAX_EPOCH from the extra opts, else the config's).
# Environment: DATA (required: the datasets folder), OUTPUT (default <repo>/output), SHOTS (default 16),
#   CFG (default vit_b16_c2_ep5_batch4_2ctx_cross_datasets), PYTHON (default python), DRY_RUN=1 (print the command only), XD_SOURCE, LOAD_EPOCH.
# Extra KEY VALUE arguments are yacs opts passed to train.py after the script's own (so they win), e.g.
#   DATA=/tmp/data bash scripts/maple/xd_test.sh caltech101 1 MODEL.BACKBONE.NAME tiny INPUT.SIZE "(32, 32)" OPTIM.MAX_EPOCH 1
# A finished run is skipped; an unfinished one resumes (see scripts/_common.sh).
source "$(dirname "${BASH_SOURCE[0]}")/../_common.sh"
run_protocol xd_test MaPLe "${CFG:-vit_b16_c2_ep5_batch4_2ctx_cross_datasets}" "$@"
