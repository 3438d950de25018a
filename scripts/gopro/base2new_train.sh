#!/usr/bin/env bash
# GOPro, base-to-new generalisation: train on the base classes (SHOTS-shot).
#
#   bash scripts/gopro/base2new_train.sh DATASET SEED [KEY VALUE ...]
#
# Output: $OUTPUT/base2new/train_base/DATASET/shots_16/GOPro/CFG/seedSEED
# DATASET: a configs/datasets/ file name without .yaml (oxford_pets, imagenet, synthetic_shapes, ...).
# The official scripts run seeds 1-5.
# Environment: DATA (required: the datasets folder), OUTPUT (default <repo>/output), SHOTS (default 16),
#   CFG (default vit_b16), PYTHON (default python), DRY_RUN=1 (print the command only).
# Extra KEY VALUE arguments are yacs opts passed to train.py after the script's own (so they win), e.g.
#   DATA=/tmp/data bash scripts/gopro/base2new_train.sh oxford_pets 1 MODEL.BACKBONE.NAME tiny INPUT.SIZE "(32, 32)" OPTIM.MAX_EPOCH 1
# A finished run is skipped; an unfinished one resumes (see scripts/_common.sh).
source "$(dirname "${BASH_SOURCE[0]}")/../_common.sh"
run_protocol base2new_train GOPro "${CFG:-vit_b16}" "$@"
