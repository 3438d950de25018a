#!/usr/bin/env bash
# IVLP, base-to-new generalisation: train on the base classes (SHOTS-shot).
#
#   bash scripts/ivlp/base2new_train.sh DATASET SEED [KEY VALUE ...]
#
# Output: $OUTPUT/base2new/train_base/DATASET/shots_16/IVLP/CFG/seedSEED
# DATASET: a configs/datasets/ file name without .yaml (oxford_pets, imagenet, synthetic_shapes, ...).
# Other configs: CFG=vit_b16_c2_ep5_batch4_4ctx_language_only (deep text prompts only),
#   CFG=vit_b16_c2_ep20_batch4_4+4ctx (PromptSRC's IVLP baseline: 4+4 tokens, depths 9/9, 20 epochs).
# Environment: DATA (required: the datasets folder), OUTPUT (default <repo>/output), SHOTS (default 16),
#   CFG (default vit_b16_c2_ep5_batch4_2+2ctx), PYTHON (default python), DRY_RUN=1 (print the command only).
# Extra KEY VALUE arguments are yacs opts passed to train.py after the script's own (so they win), e.g.
#   DATA=/tmp/data bash scripts/ivlp/base2new_train.sh oxford_pets 1 MODEL.BACKBONE.NAME tiny INPUT.SIZE "(32, 32)" OPTIM.MAX_EPOCH 1 TRAINER.IVLP.PROMPT_DEPTH_VISION 3 TRAINER.IVLP.PROMPT_DEPTH_TEXT 3
# A finished run is skipped; an unfinished one resumes (see scripts/_common.sh).
source "$(dirname "${BASH_SOURCE[0]}")/../_common.sh"
run_protocol base2new_train IVLP "${CFG:-vit_b16_c2_ep5_batch4_2+2ctx}" "$@"
