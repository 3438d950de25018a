#!/usr/bin/env bash
# CoOp, base-to-new generalisation: evaluate the base-trained model on the new classes.
#
#   bash scripts/coop/base2new_test.sh DATASET SEED [KEY VALUE ...]
#
# Output: $OUTPUT/base2new/test_new/DATASET/shots_16/CoOp/CFG/seedSEED
#   (model from $OUTPUT/base2new/train_base/DATASET/shots_16/CoOp/CFG/seedSEED)
# The model of epoch LOAD_EPOCH is loaded (default: OPTIM.MAX_EPOCH from the extra opts, else the config's).
# Pass the same extra opts as to base2new_train.sh.
# Environment: DATA (required: the datasets folder), OUTPUT (default <repo>/output), SHOTS (default 16),
#   CFG (default vit_b16_ep50_ctxv1), PYTHON (default python), DRY_RUN=1 (print the command only), LOAD_EPOCH.
# Extra KEY VALUE arguments are yacs opts passed to train.py after the script's own (so they win), e.g.
#   DATA=/tmp/data bash scripts/coop/base2new_test.sh oxford_pets 1 MODEL.BACKBONE.NAME tiny INPUT.SIZE "(32, 32)" OPTIM.MAX_EPOCH 1
# A finished run is skipped; an unfinished one resumes (see scripts/_common.sh).
source "$(dirname "${BASH_SOURCE[0]}")/../_common.sh"
run_protocol base2new_test CoOp "${CFG:-vit_b16_ep50_ctxv1}" "$@"
