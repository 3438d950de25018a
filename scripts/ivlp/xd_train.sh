#!/usr/bin/env bash
# IVLP, cross-dataset / domain generalisation: train on all ImageNet classes (SHOTS-shot).
#
#   bash scripts/ivlp/xd_train.sh SEED [KEY VALUE ...]
#
# Output: $OUTPUT/imagenet/IVLP/CFG_16shots/seedSEED
# XD_SOURCE (default imagenet) names the training dataset.
# The official xd scripts of this method train with its base-to-new config, as here (there is no
# cross-dataset config for it).
# Environment: DATA (required: the datasets folder), OUTPUT (default <repo>/output), SHOTS (default 16),
#   CFG (default vit_b16_c2_ep5_batch4_2+2ctx), PYTHON (default python), DRY_RUN=1 (print the command only), XD_SOURCE.
# Extra KEY VALUE arguments are yacs opts passed to train.py after the script's own (so they win), e.g.
#   DATA=/tmp/data bash scripts/ivlp/xd_train.sh 1 MODEL.BACKBONE.NAME tiny INPUT.SIZE "(32, 32)" OPTIM.MAX_EPOCH 1 TRAINER.IVLP.PROMPT_DEPTH_VISION 3 TRAINER.IVLP.PROMPT_DEPTH_TEXT 3
# A finished run is skipped; an unfinished one resumes (see scripts/_common.sh).
source "$(dirname "${BASH_SOURCE[0]}")/../_common.sh"
run_protocol xd_train IVLP "${CFG:-vit_b16_c2_ep5_batch4_2+2ctx}" "$@"
