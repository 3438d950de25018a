# Shared helpers of the experiment scripts (scripts/<method>/*.sh); source it, do not run it.
#
# Conventions (flag order and folder layout as CoOp's scripts/cocoop/*.sh), the same for every method:
#   * DATA (required): the folder holding the datasets, passed as --root.
#   * OUTPUT (default: <repo>/output): where the run folders go.
#   * Extra arguments after a script's positional ones are yacs KEY VALUE opts handed to train.py
#     after the script's own opts, so they win (e.g. MODEL.BACKBONE.NAME tiny OPTIM.MAX_EPOCH 1).
#   * A finished run is skipped with a message (and stops the script when its results.json records
#     another MODEL.BACKBONE.NAME than this run's: give each backbone its own OUTPUT); an
#     unfinished one is run again in the same folder,
#     where train.py resumes from the last complete checkpoint (its old log is kept as
#     log.txt-unfinished-<time>, so that log.txt, which parse_test_res.py reads, is the log of the
#     complete run). Training is finished when log.txt has "Finish training" and the final "Elapsed:"
#     line; an evaluation when log.txt has a "* accuracy:" line.
#   * A folder another run is writing into right now (its train.py holds DIR/.train.lock) is refused
#     with a message before anything in it is touched; train.py itself refuses it too. A lock left by
#     a killed run (dead pid on this host, or no heartbeat for 5 minutes from another host) is stale
#     and taken over (see RunLock in train.py).
#   * Evaluations load the checkpoint of epoch LOAD_EPOCH (env) if set, else the OPTIM.MAX_EPOCH given
#     in the extra opts, else the MAX_EPOCH of the trainer config file: the last epoch of a training
#     run made with the same config and opts.
#   * SHOTS (default 16): few-shot K (DATASET.NUM_SHOTS and the shots_<K> / <cfg>_<K>shots folder names).
#   * The <dataset> level of the folders is the dataset config's name, except for your own images
#     (image_folder.yaml or a copy): their display name (see dataset_folder below).
#   * PYTHON (default: python), DRY_RUN=1: print the train.py command instead of running it.
# Scripts can be run from any working directory.
set -euo pipefail

REPO_ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
PYTHON="${PYTHON:-python}"
SHOTS="${SHOTS:-16}"
# opts that cap every deep-prompt method's depth at the 3 layers of the built-in tiny CLIPs
# (the official configs prompt 9 or 12 layers of ViT-B/16)
TINY_DEPTH_OPTS=(TRAINER.MAPLE.PROMPT_DEPTH 3 TRAINER.IVLP.PROMPT_DEPTH_VISION 3 TRAINER.IVLP.PROMPT_DEPTH_TEXT 3
    TRAINER.VPT.PROMPT_DEPTH_VISION 3 TRAINER.PROMPTSRC.PROMPT_DEPTH_VISION 3 TRAINER.PROMPTSRC.PROMPT_DEPTH_TEXT 3)

die() {
    echo "error: $*" >&2
    exit 2
}

# abspath PATH: PATH made absolute against the caller's working directory.
abspath() {
    case "$1" in
        /*) printf '%s\n' "$1" ;;
        *) printf '%s\n' "$CALLER_PWD/$1" ;;
    esac
}

CALLER_PWD="$(pwd)"

# usage N "ARG1 ARG2" "$@": fail with a usage line unless at least N positional arguments are given.
usage() {
    local n=$1 names=$2
    shift 2
    if (($# < n)); then
        die "usage: bash $0 $names [KEY VALUE ...] (got $# argument(s))"
    fi
}

check_seed() {
    [[ "$1" =~ ^[0-9]+$ ]] || die "SEED must be a non-negative integer, got '$1'"
}

# data_root: the absolute DATA folder (required).
data_root() {
    [[ -n "${DATA:-}" ]] || die "DATA is not set: export DATA=/path/to/datasets (the folder holding the datasets) before running this script"
    [[ -d "$DATA" ]] || die "DATA=$DATA is not a directory: point it at the folder holding the datasets"
    abspath "$DATA"
}

# output_root: the absolute OUTPUT folder (default <repo>/output).
output_root() {
    if [[ -n "${OUTPUT:-}" ]]; then abspath "$OUTPUT"; else printf '%s\n' "$REPO_ROOT/output"; fi
}

# dataset_config NAME: configs/datasets/NAME.yaml (relative to the repo), which must exist.
dataset_config() {
    local path="configs/datasets/$1.yaml"
    if [[ ! -f "$REPO_ROOT/$path" ]]; then
        local known
        known="$(cd "$REPO_ROOT/configs/datasets" && ls -- *.yaml | sed 's/\.yaml$//' | tr '\n' ' ' | sed 's/ $//')"
        die "unknown dataset '$1' (no $path): use one of: $known"
    fi
    printf '%s\n' "$path"
}

# dataset_folder DATASET [OPTS ...]: the folder name of DATASET's runs (the <dataset> level of the output
#   folders): DATASET itself, except for a dataset config of your own images (DATASET.NAME ImageFolder:
#   configs/datasets/image_folder.yaml or a copy of it), named by its display name: DATASET.IMAGE_FOLDER.NAME,
#   else the base name of DATASET.IMAGE_FOLDER.DIR (from the config file, then OPTS, which win as in train.py),
#   so that two datasets of your own never share a folder.
dataset_folder() {
    local dataset=$1 file
    shift
    file="$REPO_ROOT/$(dataset_config "$dataset")" || exit 2
    if ! grep -q ImageFolder "$file"; then
        printf '%s\n' "$dataset"
        return
    fi
    (cd "$REPO_ROOT" && "$PYTHON" -m gopro_prompts.run_folder dataset-folder "$file" "${DATA:-}" "$@") || exit 2
}

# trainer_config TRAINER CFG: configs/trainers/TRAINER/CFG.yaml (relative to the repo), which must exist.
# A CFG with a slash names another trainer's folder: "CoOp/vit_b16" -> configs/trainers/CoOp/vit_b16.yaml.
trainer_config() {
    local folder=$1 name=$2
    if [[ "$name" == */* ]]; then
        folder=${name%%/*}
        name=${name#*/}
    fi
    local path="configs/trainers/$folder/$name.yaml"
    if [[ ! -f "$REPO_ROOT/$path" ]]; then
        local known
        known="$(cd "$REPO_ROOT/configs/trainers/$folder" 2>/dev/null && ls -- *.yaml | sed 's/\.yaml$//' | tr '\n' ' ' | sed 's/ $//')"
        die "unknown config '$name' for $folder (no $path): use one of: ${known:-none}"
    fi
    printf '%s\n' "$path"
}

# opt_value KEY [KEY VALUE ...]: the last VALUE given for KEY in a yacs opts list (empty if none).
opt_value() {
    local key=$1 value=""
    shift
    while (($# >= 2)); do
        [[ "$1" == "$key" ]] && value=$2
        shift 2
    done
    printf '%s\n' "$value"
}

# load_epoch CFG_FILE [OPTS ...]: LOAD_EPOCH, else OPTIM.MAX_EPOCH from OPTS, else the config file's.
load_epoch() {
    local cfg_file=$1
    shift
    if [[ -n "${LOAD_EPOCH:-}" ]]; then
        printf '%s\n' "$LOAD_EPOCH"
        return
    fi
    local from_opts
    from_opts="$(opt_value OPTIM.MAX_EPOCH "$@")"
    if [[ -n "$from_opts" ]]; then
        printf '%s\n' "$from_opts"
        return
    fi
    # Dassl's default MAX_EPOCH is 10 (dassl/config/defaults.py)
    "$PYTHON" -c 'import sys, yaml
cfg = yaml.safe_load(open(sys.argv[1])) or {}
print((cfg.get("OPTIM") or {}).get("MAX_EPOCH", 10))' "$REPO_ROOT/$cfg_file"
}

# log_has DIR PATTERN: log.txt of DIR has a line matching the extended regex PATTERN.
log_has() {
    [[ -f "$1/log.txt" ]] && grep -Eq "$2" "$1/log.txt"
}

train_finished() { log_has "$1" '^Finish training' && log_has "$1" '^Elapsed: '; }
eval_finished() { log_has "$1" '^\* accuracy: '; }

# check_not_running DIR: die when a live run holds DIR/.train.lock (the rules of train.py's RunLock).
check_not_running() {
    local dir=$1 lock="$1/.train.lock"
    [[ -f "$lock" ]] || return 0
    local pid host started ticks
    pid="$(sed -n 's/^pid=//p' "$lock" | head -n 1)"
    host="$(sed -n 's/^host=//p' "$lock" | head -n 1)"
    started="$(sed -n 's/^started=//p' "$lock" | head -n 1)"
    ticks="$(sed -n 's/^start_ticks=//p' "$lock" | head -n 1)"
    [[ "$pid" =~ ^[0-9]+$ ]] || return 0  # unreadable lock: train.py decides
    if [[ "$host" == "$HOSTNAME" ]]; then
        kill -0 "$pid" 2>/dev/null || [[ -d "/proc/$pid" ]] || return 0  # its run is gone
        if [[ -n "$ticks" && -r "/proc/$pid/stat" ]]; then
            local now
            now="$(sed 's/.*) //' "/proc/$pid/stat" | awk '{print $20}')"
            [[ "$now" == "$ticks" ]] || return 0  # the pid now belongs to another process
        fi
    else
        local age
        age=$(($(date +%s) - $(date -r "$lock" +%s)))
        ((age <= 300)) || return 0  # no heartbeat for 5 minutes
    fi
    die "another run is writing into ${dir} (pid ${pid} on ${host}, started ${started}; lock ${lock}): wait for it to finish; if that run is dead, delete ${lock}"
}

# set_aside_log DIR: keep the log of an unfinished attempt as log.txt-unfinished-<time>.
set_aside_log() {
    local dir=$1
    [[ -f "$dir/log.txt" ]] || return 0
    local target
    target="$dir/log.txt-unfinished-$(date +%Y-%m-%d-%H-%M-%S)"
    if [[ -n "${DRY_RUN:-}" ]]; then
        echo "(dry run) would move $dir/log.txt to $target"
    else
        mv "$dir/log.txt" "$target" || die "cannot move $dir/log.txt aside to $target: check the folder's permissions"
        echo "The log of the unfinished attempt is kept as $target"
    fi
}

# run_train_py ARG ...: python train.py ARG ... from the repository root (or print it with DRY_RUN).
run_train_py() {
    if [[ -n "${DRY_RUN:-}" ]]; then
        printf '(dry run) %q train.py' "$PYTHON"
        printf ' %q' "$@"
        printf '\n'
        return 0
    fi
    (cd "$REPO_ROOT" && "$PYTHON" train.py "$@")
}

# check_same_backbone DIR CFG_FILE [OPTS ...]: stop when DIR's finished results (results.json) were made
#   with another MODEL.BACKBONE.NAME than this job's (OPTS, else CFG_FILE): a finished run is skipped, so
#   its results would stand in for this backbone's.
check_same_backbone() {
    local dir=$1 cfg_file=$2 want found
    shift 2
    [[ -f "$dir/results.json" ]] || return 0
    want="$(opt_value MODEL.BACKBONE.NAME "$@")"
    found="$("$PYTHON" -c 'import json, sys, yaml
want = sys.argv[3]
if not want:
    cfg = yaml.safe_load(open(sys.argv[2])) or {}
    want = str(((cfg.get("MODEL") or {}).get("BACKBONE") or {}).get("NAME") or "")
try:
    have = str(json.load(open(sys.argv[1])).get("backbone") or "")
except (OSError, ValueError, AttributeError):
    have = ""
if want and have and want != have:
    print(have, want, sep="\t")' "$dir/results.json" "$REPO_ROOT/$cfg_file" "$want")" || return 0
    [[ -n "$found" ]] || return 0
    die "${dir} holds finished results of MODEL.BACKBONE.NAME ${found%%$'\t'*}, not ${found#*$'\t'}: finished runs are skipped, so give this backbone an OUTPUT folder of its own (e.g. OUTPUT=output/my_backbone)"
}

# begin_job DIR FINISHED RERUN_MESSAGE NEW_MESSAGE CFG_FILE [OPTS ...]: status 1 (skip the job) when the
#   FINISHED check (train_finished / eval_finished) passes on DIR, made with the same backbone
#   (check_same_backbone); otherwise stop if another run holds DIR, set an unfinished attempt's log
#   aside, and say which message applies.
begin_job() {
    local dir=$1 finished=$2 rerun=$3 new=$4
    shift 4
    if "$finished" "$dir"; then
        check_same_backbone "$dir" "$@"
        echo "Oops! The results exist at ${dir} (so skip this job)"
        return 1
    fi
    check_not_running "$dir"
    if [[ -d "$dir" ]]; then
        echo "$rerun ${dir}"
        set_aside_log "$dir"
    else
        echo "$new ${dir}"
    fi
}

# train_job TRAINER CFG DATASET SEED DIR [OPTS ...]
#   Train TRAINER with configs/trainers/TRAINER/CFG.yaml on configs/datasets/DATASET.yaml into DIR.
train_job() {
    local trainer=$1 cfg=$2 dataset=$3 seed=$4 dir=$5
    shift 5
    local root cfg_file data_file
    root="$(data_root)"
    cfg_file="$(trainer_config "$trainer" "$cfg")"
    data_file="$(dataset_config "$dataset")"
    begin_job "$dir" train_finished "Resuming the unfinished run in" "Run this job and save the output to" \
        "$cfg_file" "$@" || return 0
    run_train_py --root "$root" --seed "$seed" --trainer "$trainer" \
        --dataset-config-file "$data_file" --config-file "$cfg_file" --output-dir "$dir" "$@"
}

# eval_job TRAINER CFG DATASET SEED DIR MODEL_DIR LOAD_EPOCH [OPTS ...]
#   Evaluate into DIR; SEED, MODEL_DIR and LOAD_EPOCH may be empty (left out: zero-shot CLIP).
eval_job() {
    local trainer=$1 cfg=$2 dataset=$3 seed=$4 dir=$5 model_dir=$6 epoch=$7
    shift 7
    local root cfg_file data_file
    root="$(data_root)"
    cfg_file="$(trainer_config "$trainer" "$cfg")"
    data_file="$(dataset_config "$dataset")"
    begin_job "$dir" eval_finished "Re-running the unfinished evaluation in" "Evaluate and save the output to" \
        "$cfg_file" "$@" || return 0
    local flags=(--root "$root")
    [[ -n "$seed" ]] && flags+=(--seed "$seed")
    flags+=(--trainer "$trainer" --dataset-config-file "$data_file" --config-file "$cfg_file" --output-dir "$dir")
    [[ -n "$model_dir" ]] && flags+=(--model-dir "$model_dir")
    [[ -n "$epoch" ]] && flags+=(--load-epoch "$epoch")
    flags+=(--eval-only)
    run_train_py "${flags[@]}" "$@"
}

# ---------------------------------------------------------------------------------------------------
# The protocols, shared by every method (TRAINER = the registered trainer name, e.g. CoCoOp)
# ---------------------------------------------------------------------------------------------------

# run_protocol PROTOCOL TRAINER CFG ARGS...: a method script's whole body.  PROTOCOL is one of the
# functions below; ARGS are the script's own arguments: DATASET SEED (xd_train: SEED), then the user's
# KEY VALUE opts.  The method's fixed opts (SCRIPT_OPTS, an array the script may set) go between the
# protocol's opts and the user's, so that the user's win.
run_protocol() {
    local protocol=$1 trainer=$2 cfg=$3
    shift 3
    local names="DATASET SEED" n=2
    [[ "$protocol" == xd_train ]] && names="SEED" n=1
    usage "$n" "$names" "$@"
    local positional=("${@:1:$n}")
    shift "$n"
    "$protocol" "$trainer" "$cfg" "${positional[@]}" ${SCRIPT_OPTS[@]+"${SCRIPT_OPTS[@]}"} "$@"
}

# base2new_train TRAINER CFG DATASET SEED [OPTS ...]: train on the base classes.
base2new_train() {
    local trainer=$1 cfg=$2 dataset=$3 seed=$4
    shift 4
    check_seed "$seed"
    local dir folder
    folder="$(dataset_folder "$dataset" "$@")"
    dir="$(output_root)/base2new/train_base/${folder}/shots_${SHOTS}/${trainer}/${cfg}/seed${seed}"
    train_job "$trainer" "$cfg" "$dataset" "$seed" "$dir" \
        DATASET.NUM_SHOTS "$SHOTS" DATASET.SUBSAMPLE_CLASSES base "$@"
}

# base2new_test TRAINER CFG DATASET SEED [OPTS ...]: evaluate the base-trained model on the new classes.
base2new_test() {
    local trainer=$1 cfg=$2 dataset=$3 seed=$4
    shift 4
    check_seed "$seed"
    local folder tail out cfg_file epoch
    folder="$(dataset_folder "$dataset" "$@")"
    tail="${folder}/shots_${SHOTS}/${trainer}/${cfg}/seed${seed}"
    out="$(output_root)"
    cfg_file="$(trainer_config "$trainer" "$cfg")"
    epoch="$(load_epoch "$cfg_file" "$@")"
    eval_job "$trainer" "$cfg" "$dataset" "$seed" "$out/base2new/test_new/$tail" \
        "$out/base2new/train_base/$tail" "$epoch" \
        DATASET.NUM_SHOTS "$SHOTS" DATASET.SUBSAMPLE_CLASSES new "$@"
}

# xd_train TRAINER CFG SEED [OPTS ...]: train on all classes of the source dataset
# (XD_SOURCE, default imagenet) for cross-dataset and domain-generalisation evaluation.
xd_train() {
    local trainer=$1 cfg=$2 seed=$3
    shift 3
    check_seed "$seed"
    local source="${XD_SOURCE:-imagenet}"
    local dir folder
    folder="$(dataset_folder "$source" "$@")"
    dir="$(output_root)/${folder}/${trainer}/${cfg}_${SHOTS}shots/seed${seed}"
    train_job "$trainer" "$cfg" "$source" "$seed" "$dir" DATASET.NUM_SHOTS "$SHOTS" "$@"
}

# xd_test TRAINER CFG DATASET SEED [OPTS ...]: evaluate the xd_train model on DATASET (full test split).
xd_test() {
    local trainer=$1 cfg=$2 dataset=$3 seed=$4
    shift 4
    check_seed "$seed"
    local source="${XD_SOURCE:-imagenet}" out cfg_file epoch folder source_folder
    out="$(output_root)"
    cfg_file="$(trainer_config "$trainer" "$cfg")"
    epoch="$(load_epoch "$cfg_file" "$@")"
    folder="$(dataset_folder "$dataset" "$@")"
    source_folder="$(dataset_folder "$source" "$@")"
    eval_job "$trainer" "$cfg" "$dataset" "$seed" \
        "$out/evaluation/${trainer}/${cfg}_${SHOTS}shots/${folder}/seed${seed}" \
        "$out/${source_folder}/${trainer}/${cfg}_${SHOTS}shots/seed${seed}" "$epoch" "$@"
}
