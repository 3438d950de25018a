#!/usr/bin/env bash
# Side-by-side comparison: run every method with its own official config over the same seeds
# (so every method reads the same few-shot caches), then print the table of the protocol.
#
#   bash scripts/compare.sh base2new DATASET[,DATASET...] SEEDS [TRAINERS] [KEY VALUE ...]
#   bash scripts/compare.sh xd       TARGET[,TARGET...]   SEEDS [TRAINERS] [KEY VALUE ...]
#   bash scripts/compare.sh dg       TARGET[,TARGET...]   SEEDS [TRAINERS] [KEY VALUE ...]
#   bash scripts/compare.sh offline  [TRAINERS] [KEY VALUE ...]
#
#   DATASET   configs/datasets/ file names without .yaml (oxford_pets, dtd, synthetic_shapes, ...)
#   SEEDS     comma-separated, e.g. 1,2,3
#   TRAINERS  comma-separated, default ZeroshotCLIP,CoOp,CoCoOp,MaPLe,GOPro
#   KEY VALUE yacs opts passed to every run after the method's own config (so they win), e.g.
#             MODEL.BACKBONE.NAME tiny INPUT.SIZE "(32, 32)" OPTIM.MAX_EPOCH 1 DATASET.NUM_SHOTS 2
#
# base2new: scripts/<method>/base2new_train.sh and base2new_test.sh for each dataset, seed and method;
#   zero-shot CLIP (nothing to train) is evaluated once per dataset on the base and on the new classes
#   ($OUTPUT/base2new/test_{base,new}/DATASET/shots_K/ZeroshotCLIP/ZS_CFG/seedS, first seed).
# xd / dg: scripts/<method>/xd_train.sh on the source (XD_SOURCE, default imagenet), then xd_test.sh
#   on each target; zero-shot CLIP is evaluated on the source and each target
#   ($OUTPUT/evaluation/ZeroshotCLIP/ZS_CFG/DATASET/seedS).  dg usually takes the targets
#   imagenetv2,imagenet_sketch,imagenet_a,imagenet_r.
# offline: the embedded offline default, no data and no download: base2new on synthetic_shapes with
#   seed 1, the built-in tiny CLIP at 32x32 (MODEL.BACKBONE.NAME tiny INPUT.SIZE "(32, 32)"
#   DATALOADER.NUM_WORKERS 0), DATA defaulting to <repo>/data and OUTPUT to <repo>/output/offline_compare.
#
# The table (tools/results_tables.py) is printed at the end and saved as
# $OUTPUT/compare/<protocol>.{txt,md,csv,json,png}.  Runs that fail are reported, the others go on;
# missing or unfinished runs are marked in the table, never averaged in.  Exit status: 0 when every
# run finished, 1 otherwise, 2 on bad arguments.  Finished runs are skipped (re-running the script
# only fills the gaps).
#
# Environment: DATA (the datasets folder; defaults to <repo>/data when every dataset is synthetic),
#   OUTPUT (default <repo>/output), SHOTS (default 16, or DATASET.NUM_SHOTS from the opts),
#   ZS_CFG (CoOp config for zero-shot CLIP, default vit_b16), XD_SOURCE (default imagenet),
#   PYTHON (default python), DRY_RUN=1 (print the commands only).
#   CFG and LOAD_EPOCH are ignored here: every method runs its own official config and last epoch.
source "$(dirname "${BASH_SOURCE[0]}")/_common.sh"

ALL_TRAINERS="ZeroshotCLIP,CoOp,CoCoOp,MaPLe,GOPro"
OFFLINE_OPTS=(MODEL.BACKBONE.NAME tiny INPUT.SIZE "(32, 32)" DATALOADER.NUM_WORKERS 0)

(($# >= 1)) || die "usage: bash $0 {base2new|xd|dg} DATASET[,DATASET...] SEEDS [TRAINERS] [KEY VALUE ...] (or: bash $0 offline)"
PROTOCOL=$1
shift
if [[ "$PROTOCOL" == offline ]]; then
    PROTOCOL=base2new DATASETS=synthetic_shapes SEEDS=1
    DATA="${DATA:-$REPO_ROOT/data}"
    OUTPUT="${OUTPUT:-$REPO_ROOT/output/offline_compare}"
    PRESET=("${OFFLINE_OPTS[@]}")
else
    case "$PROTOCOL" in
        base2new | xd | dg) ;;
        *) die "unknown protocol '$PROTOCOL': use base2new, xd, dg or offline" ;;
    esac
    (($# >= 2)) || die "usage: bash $0 $PROTOCOL DATASET[,DATASET...] SEEDS [TRAINERS] [KEY VALUE ...] (got $# argument(s) after the protocol)"
    DATASETS=$1 SEEDS=$2
    shift 2
    PRESET=()
fi

# TRAINERS is optional: yacs keys are upper case, trainer names are not
TRAINERS=$ALL_TRAINERS
if (($# > 0)) && [[ "$1" =~ [a-z,] ]]; then
    TRAINERS=$1
    shift
fi
[[ "$TRAINERS" == all ]] && TRAINERS=$ALL_TRAINERS
OPTS=("${PRESET[@]}" "$@")
(( ${#OPTS[@]} % 2 == 0 )) || die "the extra arguments must be KEY VALUE pairs, got an odd number: ${OPTS[*]}"

IFS=, read -r -a DATASET_LIST <<<"$DATASETS"
IFS=, read -r -a SEED_LIST <<<"$SEEDS"
IFS=, read -r -a TRAINER_LIST <<<"$TRAINERS"
((${#DATASET_LIST[@]})) || die "no dataset given: e.g. oxford_pets,dtd"
((${#SEED_LIST[@]})) || die "no seed given: e.g. 1,2,3"
for seed in "${SEED_LIST[@]}"; do check_seed "$seed"; done
for dataset in "${DATASET_LIST[@]}"; do dataset_config "$dataset" >/dev/null; done

script_dir() { # TRAINER -> scripts/<trainer lower case>
    printf '%s\n' "$REPO_ROOT/scripts/$(printf '%s' "$1" | tr '[:upper:]' '[:lower:]')"
}
for trainer in "${TRAINER_LIST[@]}"; do
    case "$trainer" in
        ZeroshotCLIP | ZeroshotCLIP2) ;;
        *) [[ -f "$(script_dir "$trainer")/base2new_train.sh" ]] ||
            die "unknown trainer '$trainer' (no scripts/$(basename "$(script_dir "$trainer")")/): use some of $ALL_TRAINERS" ;;
    esac
done

# the synthetic datasets are generated on first use: they need no DATA
if [[ -z "${DATA:-}" ]]; then
    all_synthetic=1
    for dataset in "${DATASET_LIST[@]}" "${XD_SOURCE:-}"; do
        [[ -z "$dataset" || "$dataset" == synthetic* ]] || all_synthetic=0
    done
    if ((all_synthetic)); then
        DATA="$REPO_ROOT/data"
        echo "DATA is not set: using $DATA (the synthetic datasets are generated there)"
    fi
fi
DATA="$(data_root)"
OUTPUT="$(output_root)"
NUM_SHOTS_OPT="$(opt_value DATASET.NUM_SHOTS "${OPTS[@]}")"
[[ -n "$NUM_SHOTS_OPT" ]] && SHOTS=$NUM_SHOTS_OPT # the folder names then tell the truth
ZS_CFG="${ZS_CFG:-vit_b16}"
export DATA OUTPUT SHOTS PYTHON
[[ -n "${DRY_RUN:-}" ]] && export DRY_RUN
unset CFG LOAD_EPOCH # every method: its own official config and last epoch

FAILED=()
step() { # DESCRIPTION COMMAND ...: run, and remember a failure instead of stopping
    local what=$1
    shift
    echo
    echo "==> $what"
    if ! "$@"; then
        FAILED+=("$what")
        echo "==> FAILED: $what" >&2
        return 1
    fi
}

zeroshot_eval() { # TRAINER DATASET SEED DIR [OPTS ...]: one zero-shot CLIP evaluation, in its own bash
    # (like the method scripts, so that `set -e` and `die` behave as in a script)
    local trainer=$1 dataset=$2 seed=$3 dir=$4
    shift 4
    bash -c 'source "$1"; shift; eval_job "$@"' _ "$REPO_ROOT/scripts/_common.sh" \
        "$trainer" "CoOp/$ZS_CFG" "$dataset" "$seed" "$dir" "" "" "$@"
}

FIRST_SEED=${SEED_LIST[0]}
if [[ "$PROTOCOL" == base2new ]]; then
    for dataset in "${DATASET_LIST[@]}"; do
        for trainer in "${TRAINER_LIST[@]}"; do
            case "$trainer" in
                ZeroshotCLIP | ZeroshotCLIP2)
                    for split in base new; do
                        dir="$OUTPUT/base2new/test_${split}/${dataset}/shots_${SHOTS}/${trainer}/${ZS_CFG}/seed${FIRST_SEED}"
                        step "$trainer $dataset ($split classes)" zeroshot_eval "$trainer" "$dataset" "$FIRST_SEED" "$dir" \
                            DATASET.NUM_SHOTS "$SHOTS" DATASET.SUBSAMPLE_CLASSES "$split" "${OPTS[@]}" || true
                    done
                    ;;
                *)
                    for seed in "${SEED_LIST[@]}"; do
                        dir="$(script_dir "$trainer")"
                        step "$trainer $dataset seed $seed: train on the base classes" \
                            bash "$dir/base2new_train.sh" "$dataset" "$seed" "${OPTS[@]}" &&
                            step "$trainer $dataset seed $seed: test on the new classes" \
                                bash "$dir/base2new_test.sh" "$dataset" "$seed" "${OPTS[@]}" || true
                    done
                    ;;
            esac
        done
    done
    ROOTS=("$OUTPUT/base2new")
    TABLE_ARGS=(--datasets "$DATASETS")
else
    SOURCE="${XD_SOURCE:-imagenet}"
    export XD_SOURCE="$SOURCE"
    for trainer in "${TRAINER_LIST[@]}"; do
        case "$trainer" in
            ZeroshotCLIP | ZeroshotCLIP2)
                for dataset in "$SOURCE" "${DATASET_LIST[@]}"; do
                    dir="$OUTPUT/evaluation/${trainer}/${ZS_CFG}/${dataset}/seed${FIRST_SEED}"
                    step "$trainer $dataset" zeroshot_eval "$trainer" "$dataset" "$FIRST_SEED" "$dir" "${OPTS[@]}" || true
                done
                ;;
            *)
                for seed in "${SEED_LIST[@]}"; do
                    dir="$(script_dir "$trainer")"
                    if step "$trainer seed $seed: train on $SOURCE" bash "$dir/xd_train.sh" "$seed" "${OPTS[@]}"; then
                        for dataset in "${DATASET_LIST[@]}"; do
                            step "$trainer seed $seed: evaluate on $dataset" \
                                bash "$dir/xd_test.sh" "$dataset" "$seed" "${OPTS[@]}" || true
                        done
                    fi
                done
                ;;
        esac
    done
    ROOTS=("$OUTPUT/$SOURCE" "$OUTPUT/evaluation")
    TABLE_ARGS=(--source "$SOURCE" --datasets "$DATASETS")
fi

if [[ -n "${DRY_RUN:-}" ]]; then
    echo
    echo "(dry run) then: $PYTHON -m tools.results_tables $PROTOCOL ${ROOTS[*]} ${TABLE_ARGS[*]} --trainers $TRAINERS --seeds $SEEDS --shots $SHOTS --save $OUTPUT/compare/$PROTOCOL"
    exit 0
fi

echo
echo "==> $PROTOCOL comparison (${TRAINERS}; seeds ${SEEDS}; ${SHOTS} shots)"
existing_roots=()
for root in "${ROOTS[@]}"; do [[ -d "$root" ]] && existing_roots+=("$root"); done
((${#existing_roots[@]})) || die "no run folder was created under $OUTPUT: see the errors above"
table_rc=0
(cd "$REPO_ROOT" && "$PYTHON" -m tools.results_tables "$PROTOCOL" "${existing_roots[@]}" "${TABLE_ARGS[@]}" \
    --trainers "$TRAINERS" --seeds "$SEEDS" --shots "$SHOTS" --save "$OUTPUT/compare/$PROTOCOL") || table_rc=$?

if ((${#FAILED[@]})); then
    echo
    echo "${#FAILED[@]} step(s) failed (their logs are in the run folders):" >&2
    printf '  - %s\n' "${FAILED[@]}" >&2
    exit 1
fi
((table_rc == 0)) || exit 1
exit 0
