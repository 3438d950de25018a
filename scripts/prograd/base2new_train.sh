#!/usr/bin/env bash
# ProGrad, base-to-new generalisation: train on the base classes (SHOTS-shot).
#
#   bash scripts/prograd/base2new_train.sh DATASET SEED [KEY VALUE ...]
#
# Output: $OUTPUT/base2new/train_base/DATASET/shots_16/ProGrad/CFG/seedSEED
# DATASET: a configs/datasets/ file name without .yaml (oxford_pets, imagenet, synthetic_shapes, ...).
# SHOTS defaults to 16, like every other method here; the official scripts/base2new_train_prograd.sh
#   used 4 shots (SHOTS=4 reproduces that). Its other options (N_CTX 16, CSC False, class token at the
#   end, LOSS.LAMBDA 1.0) are in the config.
# Environment: DATA (required: the datasets folder), OUTPUT (default <repo>/output), SHOTS (default 16),
#   CFG (default vit_b16_ep100_ctxv1), PYTHON (default python), DRY_RUN=1 (print the command only).
# Extra KEY VALUE arguments are yacs opts passed to train.py after the script's own (so they win), e.g.
#   DATA=/tmp/data bash scripts/prograd/base2new_train.sh oxford_pets 1 MODEL.BACKBONE.NAME tiny INPUT.SIZE "(32, 32)" OPTIM.MAX_EPOCH 1
# A finished run is skipped; an unfinished one resumes (see scripts/_common.sh).
source "$(dirname "${BASH_SOURCE[0]}")/../_common.sh"
run_protocol base2new_train ProGrad "${CFG:-vit_b16_ep100_ctxv1}" "$@"
