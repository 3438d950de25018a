#!/usr/bin/env bash
# PromptSRC, cross-dataset / domain generalisation: train on all ImageNet classes (SHOTS-shot).
#
#   bash scripts/promptsrc/xd_train.sh SEED [KEY VALUE ...]
#
# Output: $OUTPUT/imagenet/PromptSRC/CFG_16shots/seedSEED
# XD_SOURCE (default imagenet) names the training dataset.
# Environment: DATA (required: the datasets folder), OUTPUT (default <repo>/output), SHOTS (default 16),
#   CFG (default vit_b16_c2_ep20_batch4_4+4ctx_cross_datasets), PYTHON (default python), DRY_RUN=1 (print the command only), XD_SOURCE.
# Extra KEY VALUE arguments are yacs opts passed to train.py after the script's own (so they win), e.g.
#   DATA=/tmp/data bash scripts/promptsrc/xd_train.sh 1 MODEL.BACKBONE.NAME tiny INPUT.SIZE "(32, 32)" OPTIM.MAX_EPOCH 1
# The config is the official vit_b16_c2_ep20_batch4_4+4ctx_cross_datasets (20 epochs; PromptSRC's own
# xd scripts name a vit_b16_c2_ep5_... file that its repository does not have).
# A finished run is skipped; an unfinished one resumes (see scripts/_common.sh).
source "$(dirname "${BASH_SOURCE[0]}")/../_common.sh"
run_protocol xd_train PromptSRC "${CFG:-vit_b16_c2_ep20_batch4_4+4ctx_cross_datasets}" "$@"
