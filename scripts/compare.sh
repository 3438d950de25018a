#!/usr/bin/env bash
# Side-by-side comparison: run every method with its own official config over the same seeds
# (so every method reads the same few-shot caches), then print the table of the protocol.
#
#   bash scripts/compare.sh base2new DATASET[,DATASET...] SEEDS [TRAINERS] [KEY VALUE ...]
#   bash scripts/compare.sh xd       TARGET[,TARGET...]   SEEDS [TRAINERS] [KEY VALUE ...]
#   bash scripts/compare.sh dg       TARGET[,TARGET...]   SEEDS [TRAINERS] [KEY VALUE ...]
#   bash scripts/compare.sh offline  [TRAINERS] [KEY VALUE ...]
#
#   DATASET   configs/datasets/ file names without .yaml (oxford_pets, dtd, synthetic_shapes, ...); your own
#             images: image_folder with DATASET.IMAGE_FOLDER.DIR <folder under DATA>, or a copy of
#             image_folder.yaml; their output folders and table rows are named by the display name
#             (DATASET.IMAGE_FOLDER.NAME, else the base name of DIR; see DATASETS.md, section ImageFolder)
#   SEEDS     comma-separated, e.g. 1,2,3
#   TRAINERS  comma-separated, default ZeroshotCLIP,CoOp,CoCoOp,KgCoOp,ProGrad,VPT,IVLP,MaPLe,PromptSRC,GOPro
#   KEY VALUE yacs opts passed to every run after the method's own config (so they win), e.g.
#             MODEL.BACKBONE.NAME tiny INPUT.SIZE "(32, 32)" OPTIM.MAX_EPOCH 1 DATASET.NUM_SHOTS 2
#
# base2new: scripts/<method>/base2new_train.sh and base2new_test.sh for each dataset, seed and method;
#   zero-shot CLIP (nothing to train) is evaluated once per dataset on the base and on the new classes
#   ($OUTPUT/base2new/test_{base,new}/DATASET/shots_K/ZeroshotCLIP/ZS_CFG/seedS, first seed).
# xd / dg: scripts/<method>/xd_train.sh on the source (XD_SOURCE, default imagenet), then xd_test.sh
#   on each target (CoOp: main.sh and eval.sh, its repository's scripts); zero-shot CLIP is evaluated on the source and each target
#   ($OUTPUT/evaluation/ZeroshotCLIP/ZS_CFG/DATASET/seedS).  dg usually takes the targets
#   imagenetv2,imagenet_sketch,imagenet_a,imagenet_r.
# offline: the embedded offline default, no data and no download: base2new on synthetic_shapes with
#   seed 1 and every method's official config, run with the tiny CLIP pretrained by this repository at
#   32x32 and 2 shots (MODEL.BACKBONE.NAME tiny-synthetic INPUT.SIZE "(32, 32)" DATALOADER.NUM_WORKERS 0
#   DATASET.NUM_SHOTS 2 and the prompt depths capped at 3, TINY_DEPTH_OPTS in _common.sh; later opts win, e.g. MODEL.BACKBONE.NAME tiny for
#   random weights); DATA defaults to <repo>/data, OUTPUT to <repo>/output/offline_compare.
#
# The table (gopro_prompts/results/tables.py) is printed at the end and saved as
# $OUTPUT/compare/<protocol>.{txt,md,csv,json,png}.  Runs that fail are reported, the others go on;
# missing or unfinished runs are marked in the table, never averaged in.  Exit status: 0 when every
# run finished, 1 otherwise, 2 on bad arguments.  Finished runs are skipped (re-running the script
# only fills the gaps).
#
# Environment: DATA (the datasets folder; defaults to <repo>/data when every dataset is synthetic),
#   OUTPUT (default <repo>/output), SHOTS (default 16, or DATASET.NUM_SHOTS from the opts),
#   ZS_CFG (CoOp config for zero-shot CLIP, default vit_b16), XD_SOURCE (default imagenet),
#   COOP_XD_CFG (CoOp config for xd / dg, default vit_b16_ep50: CoOp has no xd scripts, main.sh + eval.sh run),
#   PYTHON (default python), DRY_RUN=1 (print the commands only).
#   CFG and LOAD_EPOCH are ignored here: every method runs its own official config and last epoch;
#   <TRAINER>_CFG picks another config of one method (e.g. COOP_CFG=vit_b16 MAPLE_CFG=...), for the
#   base2new and xd_* scripts alike.
source "$(dirname "${BASH_SOURCE[0]}")/_common.sh"

ALL_TRAINERS="ZeroshotCLIP,CoOp,CoCoOp,KgCoOp,ProGrad,VPT,IVLP,MaPLe,PromptSRC,GOPro"
# the offline preset: the tiny CLIP pretrained by this repository (3 layers, 32x32 input, so the
# deep-prompt methods' depths are capped at 3), 2 shots so that the official schedules (e.g. GOPro's 50 epochs) take
# a minute or two on a CPU
OFFLINE_OPTS=(MODEL.BACKBONE.NAME tiny-synthetic INPUT.SIZE "(32, 32)" DATALOADER.NUM_WORKERS 0
    DATASET.NUM_SHOTS 2 "${TINY_DEPTH_OPTS[@]}")

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

# the synthetic datasets are generated on first use: they need no DATA (and DATA may not exist yet)
all_synthetic=1
[[ "$PROTOCOL" == base2new ]] || [[ "${XD_SOURCE:-imagenet}" == synthetic* ]] || all_synthetic=0
for dataset in "${DATASET_LIST[@]}"; do
    [[ "$dataset" == synthetic* ]] || all_synthetic=0
done
if ((all_synthetic)); then
    if [[ -z "${DATA:-}" ]]; then
        DATA="$REPO_ROOT/data"
        echo "DATA is not set: using $DATA (the synthetic datasets are generated there)"
    fi
    mkdir -p "$DATA"
fi
DATA="$(data_root)"
OUTPUT="$(output_root)"
# the <dataset> level of the output folders: the config name, or a dataset of your own images' display name
# (dataset_folder in _common.sh), which also names it in the table
declare -A FOLDER_OF=()
FOLDER_LIST=()
SOURCE_LIST=()
[[ "$PROTOCOL" == base2new ]] || SOURCE_LIST=("${XD_SOURCE:-imagenet}")
for dataset in "${DATASET_LIST[@]}" ${SOURCE_LIST[@]+"${SOURCE_LIST[@]}"}; do
    folder="$(dataset_folder "$dataset" ${OPTS[@]+"${OPTS[@]}"})"
    for other in "${!FOLDER_OF[@]}"; do
        [[ "$other" == "$dataset" || "${FOLDER_OF[$other]}" != "$folder" ]] ||
            die "the datasets $other and $dataset would share the output folder '$folder': give one of them another DATASET.IMAGE_FOLDER.NAME (or DIR) in its config file"
    done
    FOLDER_OF[$dataset]=$folder
done
for dataset in "${DATASET_LIST[@]}"; do FOLDER_LIST+=("${FOLDER_OF[$dataset]}"); done
FOLDERS=$(IFS=,; echo "${FOLDER_LIST[*]}")
NUM_SHOTS_OPT="$(opt_value DATASET.NUM_SHOTS "${OPTS[@]}")"
[[ -n "$NUM_SHOTS_OPT" ]] && SHOTS=$NUM_SHOTS_OPT # the folder names then tell the truth
ZS_CFG="${ZS_CFG:-vit_b16}"
export DATA OUTPUT SHOTS PYTHON
[[ -n "${DRY_RUN:-}" ]] && export DRY_RUN
unset CFG LOAD_EPOCH # every method: its own official config and last epoch

method_cfg() { # TRAINER -> "CFG=<value of TRAINER_CFG>" (e.g. COOP_CFG=vit_b16), "CFG=" (the official default)
    local var
    var="$(printf '%s' "$1" | tr '[:lower:]' '[:upper:]')_CFG"
    printf 'CFG=%s\n' "${!var:-}"
}

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
                        dir="$OUTPUT/base2new/test_${split}/${FOLDER_OF[$dataset]}/shots_${SHOTS}/${trainer}/${ZS_CFG}/seed${FIRST_SEED}"
                        step "$trainer $dataset ($split classes)" zeroshot_eval "$trainer" "$dataset" "$FIRST_SEED" "$dir" \
                            DATASET.NUM_SHOTS "$SHOTS" DATASET.SUBSAMPLE_CLASSES "$split" "${OPTS[@]}" || true
                    done
                    ;;
                *)
                    for seed in "${SEED_LIST[@]}"; do
                        dir="$(script_dir "$trainer")"
                        step "$trainer $dataset seed $seed: train on the base classes" \
                            env "$(method_cfg "$trainer")" bash "$dir/base2new_train.sh" "$dataset" "$seed" "${OPTS[@]}" &&
                            step "$trainer $dataset seed $seed: test on the new classes" \
                                env "$(method_cfg "$trainer")" bash "$dir/base2new_test.sh" "$dataset" "$seed" "${OPTS[@]}" || true
                    done
                    ;;
            esac
        done
    done
    ROOTS=("$OUTPUT/base2new")
    TABLE_ARGS=(--datasets "$FOLDERS")
else
    SOURCE="${XD_SOURCE:-imagenet}"
    export XD_SOURCE="$SOURCE"
    TARGET_LIST=()
    for dataset in "${DATASET_LIST[@]}"; do
        [[ "$dataset" == "$SOURCE" ]] || TARGET_LIST+=("$dataset") # the source is tested after training
    done
    for trainer in "${TRAINER_LIST[@]}"; do
        dir="$(script_dir "$trainer")"
        for seed in "${SEED_LIST[@]}"; do
            case "$trainer" in
                ZeroshotCLIP | ZeroshotCLIP2)
                    [[ "$seed" == "$FIRST_SEED" ]] || continue
                    for dataset in "$SOURCE" "${TARGET_LIST[@]}"; do
                        step "$trainer $dataset" zeroshot_eval "$trainer" "$dataset" "$seed" \
                            "$OUTPUT/evaluation/${trainer}/${ZS_CFG}/${FOLDER_OF[$dataset]}/seed${seed}" "${OPTS[@]}" || true
                    done
                    ;;
                CoOp)
                    # CoOp has no xd_*.sh (as in its repository): main.sh trains, eval.sh evaluates
                    # (COOP_XD_CFG, default vit_b16_ep50; 16 context tokens, class token at the end, no CSC)
                    coop_cfg="${COOP_XD_CFG:-vit_b16_ep50}"
                    if step "CoOp seed $seed: train on $SOURCE" env SEEDS="$seed" \
                        bash "$dir/main.sh" "$SOURCE" "$coop_cfg" end 16 "$SHOTS" False "${OPTS[@]}"; then
                        for dataset in "${TARGET_LIST[@]}"; do
                            step "CoOp seed $seed: evaluate on $dataset" env SEEDS="$seed" \
                                bash "$dir/eval.sh" "$dataset" "$coop_cfg" "${OPTS[@]}" || true
                        done
                    fi
                    ;;
                *)
                    if [[ ! -f "$dir/xd_train.sh" ]]; then
                        # KgCoOp, ProGrad: their repositories have no cross-dataset scripts
                        [[ "$seed" == "$FIRST_SEED" ]] && echo "==> $trainer has no xd_train.sh (none in its repository): skipped"
                        continue
                    fi
                    if step "$trainer seed $seed: train on $SOURCE" \
                        env "$(method_cfg "$trainer")" bash "$dir/xd_train.sh" "$seed" "${OPTS[@]}"; then
                        for dataset in "${TARGET_LIST[@]}"; do
                            step "$trainer seed $seed: evaluate on $dataset" \
                                env "$(method_cfg "$trainer")" bash "$dir/xd_test.sh" "$dataset" "$seed" "${OPTS[@]}" || true
                        done
                    fi
                    ;;
            esac
        done
    done
    SOURCE_FOLDER=${FOLDER_OF[$SOURCE]}
    ROOTS=("$OUTPUT/$SOURCE_FOLDER" "$OUTPUT/evaluation")
    TABLE_ARGS=(--source "$SOURCE_FOLDER" --datasets "$FOLDERS")
    # the table lists the trainers that have cross-dataset runs (not those skipped above)
    kept=()
    for trainer in "${TRAINER_LIST[@]}"; do
        case "$trainer" in
            ZeroshotCLIP | ZeroshotCLIP2 | CoOp) kept+=("$trainer") ;;
            *) [[ -f "$(script_dir "$trainer")/xd_train.sh" ]] && kept+=("$trainer") ;;
        esac
    done
    TRAINERS=$(IFS=,; echo "${kept[*]}")
fi

if [[ -n "${DRY_RUN:-}" ]]; then
    echo
    echo "(dry run) then: $PYTHON -m gopro_prompts.results.tables $PROTOCOL ${ROOTS[*]} ${TABLE_ARGS[*]} --trainers $TRAINERS --seeds $SEEDS --shots $SHOTS --save $OUTPUT/compare/$PROTOCOL"
    exit 0
fi

echo
echo "==> $PROTOCOL comparison (${TRAINERS}; seeds ${SEEDS}; ${SHOTS} shots)"
existing_roots=()
for root in "${ROOTS[@]}"; do [[ -d "$root" ]] && existing_roots+=("$root"); done
((${#existing_roots[@]})) || die "no run folder was created under $OUTPUT: see the errors above"
table_rc=0
(cd "$REPO_ROOT" && "$PYTHON" -m gopro_prompts.results.tables "$PROTOCOL" "${existing_roots[@]}" "${TABLE_ARGS[@]}" \
    --trainers "$TRAINERS" --seeds "$SEEDS" --shots "$SHOTS" --save "$OUTPUT/compare/$PROTOCOL") || table_rc=$?

if ((${#FAILED[@]})); then
    echo
    echo "${#FAILED[@]} step(s) failed (their logs are in the run folders):" >&2
    printf '  - %s\n' "${FAILED[@]}" >&2
    exit 1
fi
((table_rc == 0)) || exit 1
exit 0
