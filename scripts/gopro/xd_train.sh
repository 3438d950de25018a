#!/usr/bin/env bash
# GOPro, cross-dataset / domain generalisation: train on all ImageNet classes (SHOTS-shot).
#
#   bash scripts/gopro/xd_train.sh SEED [KEY VALUE ...]
#
# Output: $OUTPUT/imagenet/GOPro/CFG_16shots/seedSEED
# XD_SOURCE (default imagenet) names the training dataset.
# Environment: DATA (required: the datasets folder), OUTPUT (default <repo>/output), SHOTS (default 16),
#   CFG (default vit_b16_cross_datasets), PYTHON (default python), DRY_RUN=1 (print the command only), XD_SOURCE.
# Extra KEY VALUE arguments are yacs opts passed to train.py after the script's own (so they win), e.g.
#   DATA=/tmp/data bash scripts/gopro/xd_train.sh 1 MODEL.BACKBONE.NAME tiny INPUT.SIZE "(32, 32)" OPTIM.MAX_EPOCH 1
# A finished run is skipped; an unfinished one resumes (see scripts/_common.sh).
source "$(dirname "${BASH_SOURCE[0]}")/../_common.sh"
run_protocol xd_train GOPro "${CFG:-vit_b16_cross_datasets}" "$@"
