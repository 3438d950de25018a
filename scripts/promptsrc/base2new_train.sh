#!/usr/bin/env bash
# PromptSRC, base-to-new generalisation: train on the base classes (SHOTS-shot).
#
#   bash scripts/promptsrc/base2new_train.sh DATASET SEED [KEY VALUE ...]
#
# Output: $OUTPUT/base2new/train_base/DATASET/shots_16/PromptSRC/CFG/seedSEED
# DATASET: a configs/datasets/ file name without .yaml (oxford_pets, imagenet, synthetic_shapes, ...).
# Environment: DATA (required: the datasets folder), OUTPUT (default <repo>/output), SHOTS (default 16),
#   CFG (default vit_b16_c2_ep20_batch4_4+4ctx), PYTHON (default python), DRY_RUN=1 (print the command only).
# Extra KEY VALUE arguments are yacs opts passed to train.py after the script's own (so they win), e.g.
#   DATA=/tmp/data bash scripts/promptsrc/base2new_train.sh oxford_pets 1 MODEL.BACKBONE.NAME tiny INPUT.SIZE "(32, 32)" OPTIM.MAX_EPOCH 1 \
#     TRAINER.PROMPTSRC.PROMPT_DEPTH_VISION 3 TRAINER.PROMPTSRC.PROMPT_DEPTH_TEXT 3
# A finished run is skipped; an unfinished one resumes (see scripts/_common.sh).
source "$(dirname "${BASH_SOURCE[0]}")/../_common.sh"
run_protocol base2new_train PromptSRC "${CFG:-vit_b16_c2_ep20_batch4_4+4ctx}" "$@"
