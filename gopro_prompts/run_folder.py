"""A run folder holds one experiment: its run record and the checks made before a run writes into it.

* A training run writes ``<OUTPUT_DIR>/config.yaml`` (:data:`RECORD_FILE`, the full config as
  plain YAML) when it starts training.  The next training run in that folder resumes only when
  its config matches the record (keys in :data:`IGNORED_KEYS` aside); otherwise it stops with
  one line naming the differing keys.  A folder without a record (an older version, real
  Dassl or the official code made it) is compared with the config stored in its newest
  checkpoint, whatever the sub-folder (the trainer) it sits in, else with its ``results.json``.
* An ``--eval-only`` run never writes into a folder that holds a training run.
* The embedded offline default gets a folder per set of command-line overrides
  (:func:`offline_output_dir`) and an ``--eval-only`` run without ``--output-dir`` a folder
  under its model folder (:func:`eval_output_dir`).
"""
from __future__ import annotations

import hashlib
import json
import os
import os.path as osp
import re

import yaml

from gopro_prompts.results.record import (
    IMAGE_FOLDER_DATASET, RESULTS_FILE, dataset_label, read_results, write_text_atomically,
)
from gopro_prompts.user_errors import UserError

#: the run record: the config a training run in this folder was started with
RECORD_FILE = "config.yaml"
#: sub-folder of a model folder that holds its ``--eval-only`` runs made without ``--output-dir``
EVAL_FOLDER = "eval"
#: keys that cannot change a number in results.json: where files are, how often to print or
#: save, loader processes, the device, verbosity, and extra evaluation outputs (a per-class
#: mean added to the metrics, a confusion matrix file)
IGNORED_KEYS = frozenset({
    "OUTPUT_DIR", "RESUME", "DATASET.ROOT", "TRAIN.PRINT_FREQ", "TRAIN.CHECKPOINT_FREQ",
    "DATALOADER.NUM_WORKERS", "USE_CUDA", "VERBOSE", "TEST.PER_CLASS_RESULT", "TEST.COMPUTE_CMAT",
    "DATASET.IMAGE_FOLDER.SPLIT_DIR",
})
#: keys named first when they differ (what the experiment is); the others follow sorted
_FIRST_KEYS = ("TRAINER.NAME", "DATASET.NAME", "DATASET.IMAGE_FOLDER.DIR", "DATASET.IMAGE_FOLDER.NAME",
               "DATASET.SUBSAMPLE_CLASSES", "MODEL.BACKBONE.NAME", "SEED")
#: how many differing keys a refusal names
SHOWN_CHANGES = 4
#: checkpoint files of Dassl's ``save_checkpoint`` (``dassl/utils/torchtools.py``)
_CHECKPOINT = re.compile(r"^(model\.pth\.tar-\d+|model-best\.pth\.tar)$")
#: a readable offline folder name: at most this long, made of these characters
_MAX_NAME = 64
_NAME_CHARS = re.compile(r"^[A-Za-z0-9._+=,-]*$")
#: flags of train.py that set a config key (``reset_cfg``); --root, --output-dir, --resume
#: and --seed are left out: ignored keys, and the seed is a folder level of its own
_FLAG_KEYS = (("backbone", "MODEL.BACKBONE.NAME"), ("head", "MODEL.HEAD.NAME"),
              ("transforms", "INPUT.TRANSFORMS"), ("source_domains", "DATASET.SOURCE_DOMAINS"),
              ("target_domains", "DATASET.TARGET_DOMAINS"))


# ---------------------------------------------------------------------------- config comparison
def flatten_cfg(node, prefix=""):
    """``{"OPTIM.LR": 0.002, ...}``: every leaf of a (nested) config under its dotted key."""
    out = {}
    for key, value in node.items():
        if isinstance(value, dict):
            out.update(flatten_cfg(value, f"{prefix}{key}."))
        else:
            out[prefix + key] = value
    return out


def _plain(value):
    """A config value as YAML reads it back (tuples become lists)."""
    if isinstance(value, (list, tuple)):
        return [_plain(item) for item in value]
    return value


def config_changes(stored_dump, cfg, ignore=IGNORED_KEYS):
    """``KEY: old -> new`` for every value of ``cfg`` that differs from a stored config dump (:data:`_FIRST_KEYS` first).

    Keys present on one side only (another version of the code or of Dassl) are not compared;
    a dump that does not parse as a mapping compares equal.
    """
    if not stored_dump:
        return []
    try:
        stored = yaml.safe_load(stored_dump)
    except yaml.YAMLError:
        return []
    if not isinstance(stored, dict):
        return []
    old, new = flatten_cfg(stored), flatten_cfg(cfg)
    first = {key: rank for rank, key in enumerate(_FIRST_KEYS)}
    keys = sorted(set(old) & set(new), key=lambda key: (first.get(key, len(first)), key))
    return [f"{key}: {_plain(old[key])!r} -> {_plain(new[key])!r}" for key in keys
            if key not in ignore and _plain(old[key]) != _plain(new[key])]


def changed_config_error(what, changes, folder):
    """The one-line refusal: ``WHAT was made with another config (K: old -> new; ...): fix``."""
    shown = "; ".join(changes[:SHOWN_CHANGES])
    if len(changes) > SHOWN_CHANGES:
        shown += f"; and {len(changes) - SHOWN_CHANGES} more"
    return UserError(
        f"{what} was made with another config ({shown}): use another --output-dir, or the old values "
        f"to resume it, or delete {folder}"
    )


# ---------------------------------------------------------------------------- the folder's run
def checkpoint_files(folder):
    """Checkpoint files in the sub-folders of ``folder`` (one per model / trainer), newest first.

    A pre-emption checkpoint (``trainers/preemption.py``) in ``folder`` itself counts too.
    """
    from gopro_prompts.trainers.preemption import PREEMPT_FILE

    found = []
    try:
        entries = os.listdir(folder)
    except OSError:
        return []
    if PREEMPT_FILE in entries and osp.isfile(osp.join(folder, PREEMPT_FILE)):
        found.append((osp.getmtime(osp.join(folder, PREEMPT_FILE)), osp.join(folder, PREEMPT_FILE)))
    for entry in entries:
        sub = osp.join(folder, entry)
        if entry.startswith(".") or not osp.isdir(sub):
            continue
        for name in os.listdir(sub):
            path = osp.join(sub, name)
            if _CHECKPOINT.match(name) and osp.isfile(path):
                found.append((osp.getmtime(path), path))
    return [path for _, path in sorted(found, reverse=True)]


def _stored_checkpoint_config(paths):
    """``(path, config dump)`` of the newest readable checkpoint, or None (none reads, or it has no config)."""
    from gopro_prompts.dassl_compat import load_checkpoint

    for path in paths:
        try:
            checkpoint = load_checkpoint(path)
        except Exception:  # truncated or refused: the resume itself reports it
            continue
        dump = checkpoint.get("config") if isinstance(checkpoint, dict) else None
        return (path, dump) if isinstance(dump, str) and dump else None
    return None


def _results(folder):
    try:
        return read_results(folder)
    except (OSError, ValueError):  # unreadable results.json: nothing to compare with
        return None


#: results.json field -> the config key it comes from (gopro_prompts.results.record.build_record)
_RESULT_FIELDS = (("trainer", "TRAINER.NAME"), ("dataset", "DATASET.NAME"),
                  ("subsample", "DATASET.SUBSAMPLE_CLASSES"), ("shots", "DATASET.NUM_SHOTS"), ("seed", "SEED"))


def _results_changes(record, cfg):
    flat = flatten_cfg(cfg)
    if flat.get("DATASET.NAME") == IMAGE_FOLDER_DATASET:  # its record holds the display name (dataset_label)
        flat["DATASET.IMAGE_FOLDER.NAME"] = dataset_label(cfg)
        fields = [(field, "DATASET.IMAGE_FOLDER.NAME" if field == "dataset" else key) for field, key in _RESULT_FIELDS]
    else:
        fields = _RESULT_FIELDS
    changes = [f"{key}: {record[field]!r} -> {flat[key]!r}" for field, key in fields
               if field in record and key in flat and record[field] != flat[key]]
    backbone = cfg.MODEL.BACKBONE.NAME or cfg.MODEL.BACKBONE.PATH
    if record.get("backbone") and record["backbone"] != backbone:
        changes.append(f"MODEL.BACKBONE.NAME: {record['backbone']!r} -> {backbone!r}")
    return changes


def check_training_folder(cfg):
    """Refuse (UserError) a training run whose output folder holds a run made with another config.

    A folder with neither a checkpoint nor ``results.json`` holds nothing a run would resume or
    overwrite, so its record (of a run stopped before its first save) does not count.
    """
    folder = cfg.OUTPUT_DIR
    if not osp.isdir(folder):
        return
    checkpoints = checkpoint_files(folder)
    results = _results(folder)
    if not checkpoints and results is None:
        return
    record = osp.join(folder, RECORD_FILE)
    if osp.isfile(record):
        with open(record) as f:
            changes = config_changes(f.read(), cfg)
    else:
        stored = _stored_checkpoint_config(checkpoints)
        if stored is not None:
            changes = config_changes(stored[1], cfg)
        elif results is not None and results.get("eval_only"):
            raise UserError(f"{folder} holds the results of an --eval-only run, which training would "
                            "overwrite: use another --output-dir, or delete " + folder)
        else:
            changes = _results_changes(results, cfg) if results is not None else []
    if changes:
        raise changed_config_error(f"the run in {folder}", changes, folder)


def write_record(cfg):
    """Write the run record ``<OUTPUT_DIR>/config.yaml`` (plain YAML, atomically); returns its path."""
    os.makedirs(cfg.OUTPUT_DIR, exist_ok=True)
    text = ("# The config of the training run in this folder (gopro_prompts.run_folder): a run with "
            "another config is refused\n" + cfg.dump())
    return write_text_atomically(osp.join(cfg.OUTPUT_DIR, RECORD_FILE), text)


def record_after_resume(trainer, cfg):
    """Make ``trainer`` write the run record right after its ``before_train`` (where Dassl resumes).

    A run refused while resuming (a checkpoint of another trainer or config) so leaves no record.
    """
    before_train = trainer.before_train

    def before_train_then_record(*args, **kwargs):
        result = before_train(*args, **kwargs)
        write_record(cfg)
        return result

    trainer.before_train = before_train_then_record


def holds_training_run(folder):
    """Whether ``folder`` holds a training run: its record, a checkpoint, or a training run's results.json."""
    if not osp.isdir(folder):
        return False
    if osp.isfile(osp.join(folder, RECORD_FILE)) or checkpoint_files(folder):
        return True
    results = _results(folder)
    return results is not None and not results.get("eval_only", False)


def check_eval_folder(folder):
    """Refuse (UserError) an ``--eval-only`` run into a folder that holds a training run."""
    if holds_training_run(folder):
        raise UserError(
            f"{folder} holds a training run, whose {RESULTS_FILE} an --eval-only run would overwrite: "
            f"give another --output-dir, or leave --output-dir out to write into "
            f"<model-dir>/{EVAL_FOLDER}/<dataset>_<classes>_<checkpoint>"
        )


# ---------------------------------------------------------------------------- folder names
def _safe(text):
    return re.sub(r"[^A-Za-z0-9._+=,-]", "-", str(text))


def eval_output_dir(cfg, model_dir, load_epoch):
    """``<model-dir>/eval/<dataset>_<classes>[_<target domains>]_<checkpoint>`` of an --eval-only run.

    ``<dataset>`` is ``DATASET.NAME``, for ImageFolder its display name (``dataset_label``).

    ``<checkpoint>`` is ``epoch<N>`` (``--load-epoch N``), ``model-best`` (no --load-epoch) or
    ``no-model`` (no --model-dir: the folder then sits under the default output folder).
    """
    if not model_dir:
        checkpoint = "no-model"
    else:
        checkpoint = "model-best" if load_epoch is None else f"epoch{load_epoch}"
    parts = [dataset_label(cfg), cfg.DATASET.SUBSAMPLE_CLASSES]
    if cfg.DATASET.TARGET_DOMAINS:
        parts.append("+".join(cfg.DATASET.TARGET_DOMAINS))
    parts.append(checkpoint)
    return osp.join(model_dir or cfg.OUTPUT_DIR, EVAL_FOLDER, _safe("_".join(str(p) for p in parts)))


def _value_text(value):
    if isinstance(value, (list, tuple)):
        return "+".join(_value_text(item) for item in value)
    return str(value)


def command_line_overrides(args, cfg):
    """``[(KEY, value text)]``, sorted: the config keys set by ``args`` (flags and opts), as ``cfg`` holds them.

    Ignored keys (:data:`IGNORED_KEYS`), ``SEED`` and ``TRAINER.NAME`` (folder levels) are left out; ``--config-file F`` counts as
    ``config=<F's stem>``.
    """
    flat = flatten_cfg(cfg)
    keys = {key for key in list(args.opts or [])[::2] if key in flat}
    keys |= {key for flag, key in _FLAG_KEYS if getattr(args, flag, None)}
    return sorted((key, _value_text(flat[key])) for key in keys
                  if key not in IGNORED_KEYS and key not in ("SEED", "TRAINER.NAME"))


def overrides_folder_name(pairs):
    """``KEY=VALUE,KEY=VALUE`` when short and plain, else ``opts-<10 hex digits>`` (hash of the pairs)."""
    name = ",".join(f"{key}={value}" for key, value in pairs)
    if len(name) <= _MAX_NAME and _NAME_CHARS.match(name):
        return name
    return "opts-" + hashlib.sha1(json.dumps(pairs).encode()).hexdigest()[:10]


def offline_output_dir(args, cfg):
    """``output/offline/<Trainer>[/<overrides>]/seed<SEED>`` of the embedded offline default."""
    pairs = command_line_overrides(args, cfg)
    parts = ["output", "offline", cfg.TRAINER.NAME]
    if pairs:
        parts.append(overrides_folder_name(pairs))
    return osp.join(*parts, f"seed{cfg.SEED}")


def with_output_dir(cfg, output_dir):
    """``cfg`` (frozen again) with ``OUTPUT_DIR`` set."""
    cfg.defrost()
    cfg.OUTPUT_DIR = output_dir
    cfg.freeze()
    return cfg


# ---------------------------------------------------------------------------- dataset folder names
def check_dataset_label(label):
    """Refuse (UserError) a display name of an ImageFolder dataset that cannot name its runs' folders."""
    from gopro_prompts.results.record import label_problem
    from gopro_prompts.results.runs import reserved_dataset_names

    problem = label_problem(label, reserved_dataset_names())
    if problem:
        raise UserError(f"ImageFolder: {problem}; set DATASET.IMAGE_FOLDER.NAME to another name "
                        "(see DATASETS.md, section ImageFolder)")
    return label


def dataset_folder_name(config_file, root="", opts=()):
    """The folder name of a dataset's runs in the experiment scripts (scripts/_common.sh ``dataset_folder``).

    The config file's base name (``oxford_pets``), except for an ImageFolder config (a copy of
    ``configs/datasets/image_folder.yaml``): its display name (``record.dataset_label``) from the file's
    ``DATASET.IMAGE_FOLDER`` keys and then ``opts`` (``KEY VALUE`` pairs, which win as in train.py), so
    that two user datasets never share a folder.  ``root``: the data folder (``--root``).
    """
    from gopro_prompts.results.record import image_folder_label

    with open(config_file) as f:
        content = yaml.safe_load(f) or {}
    dataset = dict(content.get("DATASET") or {}) if isinstance(content, dict) else {}
    node = dict(dataset.get("IMAGE_FOLDER") or {})
    opts = list(opts)
    for key, value in zip(opts[::2], opts[1::2]):
        if key == "DATASET.NAME":
            dataset["NAME"] = value
        elif key == "DATASET.ROOT":
            root = value
        elif key.startswith("DATASET.IMAGE_FOLDER."):
            node[key[len("DATASET.IMAGE_FOLDER."):]] = value
    stem = osp.splitext(osp.basename(config_file))[0]
    if dataset.get("NAME") != IMAGE_FOLDER_DATASET:
        return stem
    label = image_folder_label(node.get("NAME", ""), node.get("DIR", ""), root)
    if not label:
        raise UserError(f"{stem}: give the folder of your images with DATASET.IMAGE_FOLDER.DIR <folder under "
                        "DATA> (or set DIR in a copy of the config file; see DATASETS.md, section ImageFolder)")
    return check_dataset_label(label)


def _main(argv):
    """``python -m gopro_prompts.run_folder dataset-folder CONFIG_FILE ROOT [KEY VALUE ...]``: print
    :func:`dataset_folder_name` (exit 0), or one ``error:`` line (exit 2)."""
    import sys

    if len(argv) < 3 or argv[0] != "dataset-folder":
        sys.stderr.write("usage: python -m gopro_prompts.run_folder dataset-folder CONFIG_FILE ROOT [KEY VALUE ...]\n")
        return 2
    try:
        print(dataset_folder_name(argv[1], argv[2], argv[3:]))
    except (UserError, OSError, yaml.YAMLError) as exc:
        sys.stderr.write(f"error: {str(exc).splitlines()[0] if str(exc) else type(exc).__name__}\n")
        return 2
    return 0


if __name__ == "__main__":
    import sys

    sys.exit(_main(sys.argv[1:]))
