"""Read the result of run folders: ``results.json`` when present, else the newest log.

A *run folder* is an ``--output-dir`` of ``train.py`` (or of the CoOp / CoCoOp / MaPLe
code).  Its result is read, in this order:

1. ``results.json`` (written by every final evaluation, see :mod:`gopro_prompts.results.record`);
2. otherwise the newest of ``log.txt`` / ``log.txt-<timestamp>``: a re-run in the same
   folder logs to ``log.txt-%Y-%m-%d-%H-%M-%S`` (Dassl's ``setup_logger``), and the newest
   run is the one that counts.  The value is the last ``* <keyword>: NUMBER%`` line after
   the end marker (as CoOp's ``parse_test_res.py``).

Logs set aside by our scripts (``log.txt-unfinished-<time>``) are earlier attempts: they are
never read for a value, but they show that a run was started.

A run is ``ok`` (has a value), ``unfinished`` (a log but no final result) or ``missing``
(nothing at all).  Callers report the last two; they never average them.
"""
from __future__ import annotations

import ast
import datetime
import os
import os.path as osp
import re
from dataclasses import dataclass, field
from typing import Dict, List, Optional, Tuple

from gopro_prompts import resource_path
from gopro_prompts.results.record import IMAGE_FOLDER_DATASET, RESULTS_FILE, image_folder_label, read_results


LOG_FILE = "log.txt"
#: a Dassl re-run log: log.txt-%Y-%m-%d-%H-%M-%S (Dassl's dassl/utils/logger.py setup_logger)
_STAMPED_LOG = re.compile(r"^log\.txt-(\d{4}-\d{2}-\d{2}-\d{2}-\d{2}-\d{2})$")
_STAMP_FORMAT = "%Y-%m-%d-%H-%M-%S"

#: end markers of a training log.  "Finished training" is the pre-0.6.1 Dassl string that
#: MaPLe's parse_test_res.py still expects; accepting both is a deliberate fix,
#: so old MaPLe logs and current ones both parse.
END_MARKERS = ("Finish training", "Finished training")
#: end marker of an evaluation log (``--test-log``)
TEST_MARKER = "=> result"

#: ``--keyword`` (the printed name) -> key of results.json's ``metrics``
METRIC_OF_KEYWORD = {"accuracy": "accuracy", "error": "error_rate", "macro_f1": "macro_f1"}

#: trainer names of this project and of the official code bases (used to read folder paths)
KNOWN_TRAINERS = ("ZeroshotCLIP", "ZeroshotCLIP2", "CoOp", "CoCoOp", "MaPLe", "GOPro",
                  "IVLP", "VPT", "PromptSRC", "KgCoOp", "ProGrad", "StyLIP")

OK, UNFINISHED, MISSING = "ok", "unfinished", "missing"


@dataclass
class Run:
    """The result of one run folder."""

    path: str
    status: str
    value: Optional[float] = None
    #: the file the value was read from (results.json or a log)
    source: Optional[str] = None
    #: trainer, config, dataset, subsample, shots, seed, backbone, eval_only, target_domains, ...
    info: Dict = field(default_factory=dict)
    note: str = ""

    @property
    def ok(self) -> bool:
        return self.status == OK

    def describe(self) -> str:
        """One line for reports: the folder, its state and why."""
        return f"{self.path}: {self.status}" + (f" ({self.note})" if self.note else "")


# ---------------------------------------------------------------------------------------------- logs
def log_files(run_dir: str) -> List[str]:
    """``log.txt`` and ``log.txt-<timestamp>`` of ``run_dir``, oldest first."""
    try:
        names = os.listdir(run_dir)
    except (FileNotFoundError, NotADirectoryError):
        return []
    stamped = sorted(n for n in names if _STAMPED_LOG.match(n))  # the stamp sorts by time
    ordered = ([LOG_FILE] if LOG_FILE in names else []) + stamped
    return [osp.join(run_dir, n) for n in ordered]


def set_aside_logs(run_dir: str) -> List[str]:
    """Other ``log.txt-*`` files (e.g. ``log.txt-unfinished-<time>``): earlier attempts."""
    try:
        names = os.listdir(run_dir)
    except (FileNotFoundError, NotADirectoryError):
        return []
    return sorted(osp.join(run_dir, n) for n in names
                  if n.startswith(LOG_FILE + "-") and not _STAMPED_LOG.match(n))


def newest_log(run_dir: str) -> Optional[str]:
    """The log of the latest run in ``run_dir`` (None if it has none)."""
    logs = log_files(run_dir)
    return logs[-1] if logs else None


def log_start_time(path: str) -> Optional[datetime.datetime]:
    """Start time of a re-run, from its ``log.txt-<timestamp>`` name (None for ``log.txt``)."""
    match = _STAMPED_LOG.match(osp.basename(path))
    return datetime.datetime.strptime(match.group(1), _STAMP_FORMAT) if match else None


def _read_lines(path: str) -> List[str]:
    with open(path, encoding="utf-8", errors="replace") as f:
        return f.read().splitlines()


def value_from_log(lines: List[str], keyword: str = "accuracy", test_log: bool = False) -> Optional[float]:
    """The last ``* keyword: NUMBER%`` after the end marker (as CoOp's ``parse_test_res.py``).

    Lines are stripped; the marker must equal a whole line (``=> result`` with ``test_log``,
    else ``Finish training`` / ``Finished training``) and is itself searched too; nothing
    before it counts; the last match wins.  The keyword is matched literally (the official
    parser inserts it into the pattern unescaped; escaping it is a deliberate fix).
    """
    markers = (TEST_MARKER,) if test_log else END_MARKERS
    pattern = re.compile(r"\* " + re.escape(keyword) + r": ([\d.eE+-]+)%")
    started, value = False, None
    for line in lines:
        line = line.strip()
        if not started and line in markers:
            started = True
        if started:
            match = pattern.search(line)
            if match:
                try:
                    value = float(match.group(1))
                except ValueError:
                    continue
    return value


# -------------------------------------------------------------------------------- log header (info)
_CFG_LINE = re.compile(r"^( *)([A-Z][A-Z0-9_]*):(?: (.*))?$")
_ARG_LINE = re.compile(r"^([a-z_][a-z0-9_]*): ?(.*)$")


def parse_log_header(lines: List[str]) -> Dict[str, Dict[str, str]]:
    """The ``** Arguments **`` block and the printed config of a Dassl-style log.

    Returns ``{"args": {name: text}, "cfg": {"DATASET.NAME": text, ...}}``.  The config is
    yacs' dump (nested keys, two spaces per level), printed by train.py of this project and
    of CoOp / CoCoOp / MaPLe alike.
    """
    args: Dict[str, str] = {}
    cfg: Dict[str, str] = {}
    state = None
    stack: List[tuple] = []  # (indent, key)
    for raw in lines:
        line = raw.rstrip("\n")
        if line.strip() == "** Arguments **":
            state = "args_title"
            continue
        if line.strip() == "** Config **":
            state = "cfg_title"
            continue
        if line.startswith("****"):
            state = {"args_title": "args", "cfg_title": "cfg"}.get(state, None if state != "args" else "done")
            continue
        if state == "args":
            match = _ARG_LINE.match(line)
            if match:
                args[match.group(1)] = match.group(2).strip()
        elif state == "cfg":
            match = _CFG_LINE.match(line)
            if not match:
                break  # the dump is over
            indent, key, value = len(match.group(1)), match.group(2), match.group(3)
            while stack and stack[-1][0] >= indent:
                stack.pop()
            dotted = ".".join([k for _, k in stack] + [key])
            cfg[dotted] = (value or "").strip()
            if not (value or "").strip():
                stack.append((indent, key))
    return {"args": args, "cfg": cfg}


def _literal(text, default=None):
    try:
        return ast.literal_eval(text)
    except (ValueError, SyntaxError, TypeError):
        return default


def _as_int(text) -> Optional[int]:
    try:
        return int(str(text).strip())
    except (TypeError, ValueError):
        return None


def info_from_header(header: Dict[str, Dict[str, str]]) -> Dict:
    """results.json-like fields from a parsed log header (absent values left out)."""
    args, cfg = header["args"], header["cfg"]
    info: Dict = {}
    if cfg.get("TRAINER.NAME") or args.get("trainer"):
        info["trainer"] = cfg.get("TRAINER.NAME") or args.get("trainer")
    config_file = args.get("config_file", "")
    if config_file:
        info["config"] = osp.splitext(osp.basename(config_file))[0]
        info["config_file"] = config_file
    if cfg.get("DATASET.NAME"):
        info["dataset"] = cfg["DATASET.NAME"]
        if cfg["DATASET.NAME"] == IMAGE_FOLDER_DATASET:  # the display name, as results.json holds it
            values = [str(_literal(cfg.get(f"DATASET.{key}", ""), cfg.get(f"DATASET.{key}", "")))
                      for key in ("IMAGE_FOLDER.NAME", "IMAGE_FOLDER.DIR", "ROOT")]
            info["dataset"] = image_folder_label(*values) or IMAGE_FOLDER_DATASET
    # CoOp's original train.py has no SUBSAMPLE_CLASSES: every class is used
    info["subsample"] = cfg.get("DATASET.SUBSAMPLE_CLASSES") or "all"
    for key, name in (("DATASET.NUM_SHOTS", "shots"), ("SEED", "seed")):
        value = _as_int(cfg.get(key))
        if value is not None:
            info[name] = value
    backbone = cfg.get("MODEL.BACKBONE.NAME") or cfg.get("MODEL.BACKBONE.PATH")
    if backbone:
        info["backbone"] = backbone
    for key, name in (("DATASET.SOURCE_DOMAINS", "source_domains"), ("DATASET.TARGET_DOMAINS", "target_domains")):
        value = _literal(cfg.get(key, "()"), ())
        info[name] = list(value) if isinstance(value, (list, tuple)) else []
    if "eval_only" in args:
        info["eval_only"] = args["eval_only"] == "True"
    if args.get("model_dir"):
        info["model_dir"] = args["model_dir"]
    if args.get("load_epoch") not in (None, "", "None"):
        info["load_epoch"] = _as_int(args["load_epoch"])
    return info


# --------------------------------------------------------------------------------- folder paths
_DATASET_CONFIGS: Optional[Dict[str, Tuple[str, bool]]] = None


def _dataset_configs(configs_dir: Optional[str] = None) -> Dict[str, Tuple[str, bool]]:
    """``configs/datasets/<file>.yaml`` base name -> (its name in results, whether it is an ImageFolder
    config), each file read once (and once per process for the package's own folder).

    The name is ``DATASET.NAME`` (oxford_pets -> OxfordPets); for a copy of ``image_folder.yaml``
    (``DATASET.NAME: ImageFolder``) the display name its ``DATASET.IMAGE_FOLDER`` keys give
    (``birds.yaml`` with ``DIR: birds`` -> ``birds``), as its runs' ``results.json`` records it, ``""``
    when it sets neither ``NAME`` nor ``DIR`` (``image_folder.yaml`` itself).  A file without a name is left out.
    """
    global _DATASET_CONFIGS
    if configs_dir is None and _DATASET_CONFIGS is not None:
        return _DATASET_CONFIGS
    folder = configs_dir or resource_path("configs", "datasets")
    configs: Dict[str, Tuple[str, bool]] = {}
    if osp.isdir(folder):
        for fname in sorted(os.listdir(folder)):
            if not fname.endswith(".yaml"):
                continue
            with open(osp.join(folder, fname)) as f:
                text = f.read()
            stem = fname[: -len(".yaml")]
            label = _image_folder_config_label(text) if IMAGE_FOLDER_DATASET in text else None
            if label is not None:
                configs[stem] = (label, True)
                continue
            match = re.search(r"^\s+NAME:\s*[\"']?([^\"'\s#]+)", text, flags=re.M)
            if match:
                configs[stem] = (match.group(1), False)
    if configs_dir is None:
        _DATASET_CONFIGS = configs
    return configs


def dataset_config_names(configs_dir: Optional[str] = None) -> Dict[str, str]:
    """``configs/datasets/<file>.yaml`` base name -> its name in results (:func:`_dataset_configs`);
    an ImageFolder config without a display name (``image_folder.yaml`` itself) is left out."""
    return {stem: name for stem, (name, _) in _dataset_configs(configs_dir).items() if name}


def _image_folder_config_label(text: str) -> Optional[str]:
    """The display name an ImageFolder dataset config gives (``""`` if none), None for another config."""
    import yaml

    try:
        content = yaml.safe_load(text)
    except yaml.YAMLError:
        return None
    dataset = content.get("DATASET") if isinstance(content, dict) else None
    if not isinstance(dataset, dict) or dataset.get("NAME") != IMAGE_FOLDER_DATASET:
        return None
    node = dataset.get("IMAGE_FOLDER") if isinstance(dataset.get("IMAGE_FOLDER"), dict) else {}
    return image_folder_label(node.get("NAME", ""), node.get("DIR", ""))


def reserved_dataset_names(configs_dir: Optional[str] = None) -> List[str]:
    """The config names and ``DATASET.NAME``s of the datasets other than ImageFolder (the benchmarks):
    a display name of a user's dataset must differ from each (output folders and table rows)."""
    reserved = set()
    for stem, (name, image_folder) in _dataset_configs(configs_dir).items():
        if not image_folder:
            reserved.update((stem, name))
    return sorted(reserved)


def canonical_dataset(name: str) -> str:
    """A dataset's ``DATASET.NAME`` given that or its config file name (``oxford_pets``)."""
    return dataset_config_names().get(name, name)


def info_from_path(path: str) -> Dict:
    """What the official folder layouts (CoCoOp's and MaPLe's scripts) say about a run.

    ``base2new/{train_base,test_base,test_new}/<dataset>/shots_<K>/<Trainer>/<cfg>/seed<S>``,
    ``evaluation/<Trainer>/<cfg>_<K>shots[/...]/<dataset>/seed<S>`` and
    ``<dataset>/<Trainer>/<cfg>_<K>shots[/...]/seed<S>``.
    """
    parts = [p for p in osp.normpath(path).split(os.sep) if p]
    info: Dict = {}
    if parts and re.fullmatch(r"seed-?\d+", parts[-1]):
        info["seed"] = int(parts[-1][4:])
    for i, part in enumerate(parts):
        shots = re.fullmatch(r"shots_(\d+)", part) or re.fullmatch(r".*_(\d+)shots", part)
        if shots:
            info["shots"] = int(shots.group(1))
        if part in ("train_base", "test_base", "test_new") and i + 1 < len(parts):
            info["subsample"] = "new" if part == "test_new" else "base"
            info["dataset"] = canonical_dataset(parts[i + 1])
        if part in KNOWN_TRAINERS:
            info["trainer"] = part
            following = parts[i + 1] if i + 1 < len(parts) else ""
            if following and not following.startswith("seed"):
                info["config"] = re.sub(r"_\d+shots$", "", following)
            if "dataset" not in info and i > 0 and parts[i - 1] != "evaluation" and "base2new" not in parts:
                info["dataset"] = canonical_dataset(parts[i - 1])
    if "evaluation" in parts and len(parts) >= 2 and "seed" in info:
        info.setdefault("dataset", canonical_dataset(parts[-2]))
    return info


# ------------------------------------------------------------------------------------ one run
def _stale_results(record: Dict, newest: Optional[str]) -> bool:
    """Did the newest log start after results.json was written (a later run)?"""
    if not newest or not record.get("finished_at"):
        return False
    started = log_start_time(newest)
    if started is None:
        return False
    try:
        finished = datetime.datetime.fromisoformat(record["finished_at"])
    except ValueError:
        return False
    return started > finished


def _auto_test_log(info: Dict) -> bool:
    """Evaluation-only logs (and zero-shot CLIP, which never trains) end with ``=> result`` blocks only."""
    return bool(info.get("eval_only")) or str(info.get("trainer", "")).startswith("ZeroshotCLIP")


def read_run(run_dir: str, keyword: str = "accuracy", test_log: Optional[bool] = None) -> Run:
    """The result of one run folder.

    ``test_log``: True reads logs from the first ``=> result`` line (``--test-log``), False
    from ``Finish training``, None (default) picks by the log itself: evaluation-only runs
    and zero-shot CLIP use the former.
    """
    run_dir = osp.normpath(run_dir)
    info = info_from_path(run_dir)
    newest = newest_log(run_dir)
    header_lines = _read_lines(newest) if newest else None
    if header_lines is None:
        attempts = set_aside_logs(run_dir)
        if attempts:
            header_lines = _read_lines(attempts[-1])
    if header_lines is not None:
        info.update(info_from_header(parse_log_header(header_lines)))

    record = read_results(run_dir)
    if record is not None and record.get("split", "test") == "test":
        info.update({k: record[k] for k in ("trainer", "config", "dataset", "subsample", "shots", "seed",
                                            "backbone", "eval_only", "model_dir", "load_epoch", "epoch",
                                            "source_domains", "target_domains", "finished_at")
                     if k in record})
        info["metrics"] = dict(record.get("metrics", {}))
        value = info["metrics"].get(METRIC_OF_KEYWORD.get(keyword, keyword))
        if value is not None and not _stale_results(record, newest):
            return Run(run_dir, OK, float(value), osp.join(run_dir, RESULTS_FILE), info)
        if value is not None:  # a later run started after results.json was written
            later = value_from_log(_read_lines(newest), keyword, _pick(test_log, info))
            if later is not None:
                return Run(run_dir, OK, later, newest, info,
                           note=f"{osp.basename(newest)} is newer than {RESULTS_FILE}")
            return Run(run_dir, UNFINISHED, None, newest, info,
                       note=f"the latest run ({osp.basename(newest)}) has no result; {RESULTS_FILE} "
                            f"is from an earlier run ({record.get('finished_at')})")

    if newest is None:
        if header_lines is not None:
            return Run(run_dir, UNFINISHED, None, None, info,
                       note="only the log of an unfinished attempt (log.txt-unfinished-*) is there")
        return Run(run_dir, MISSING, None, None, info, note=f"no {RESULTS_FILE} and no {LOG_FILE}")

    use_test_marker = _pick(test_log, info)
    value = value_from_log(header_lines, keyword, use_test_marker)
    if value is not None:
        return Run(run_dir, OK, value, newest, info)
    marker = TEST_MARKER if use_test_marker else END_MARKERS[0]
    note = f"no '* {keyword}:' line after '{marker}' in {osp.basename(newest)}"
    if not use_test_marker and any(line.strip() == TEST_MARKER for line in header_lines) \
            and not any(line.strip() in END_MARKERS for line in header_lines):
        note += " (an evaluation-only log? use --test-log)"
    return Run(run_dir, UNFINISHED, None, newest, info, note=note)


def _pick(test_log: Optional[bool], info: Dict) -> bool:
    return _auto_test_log(info) if test_log is None else bool(test_log)


# --------------------------------------------------------------------------------- a whole tree
def is_run_dir(path: str) -> bool:
    """Does ``path`` hold a run (results.json or any log.txt*)?"""
    try:
        names = os.listdir(path)
    except (FileNotFoundError, NotADirectoryError, PermissionError):
        return False
    return RESULTS_FILE in names or any(n == LOG_FILE or n.startswith(LOG_FILE + "-") for n in names)


def find_run_dirs(root: str) -> List[str]:
    """Every run folder under ``root`` (``root`` included), sorted; hidden folders are skipped.

    Empty ``seed<N>`` folders are included too (a run that was started but left nothing).
    """
    found = []
    for dirpath, dirnames, _ in os.walk(root):
        dirnames[:] = sorted(d for d in dirnames if not d.startswith(".") and d != "tensorboard")
        if is_run_dir(dirpath) or (re.fullmatch(r"seed-?\d+", osp.basename(dirpath)) and not dirnames):
            found.append(osp.normpath(dirpath))
    return sorted(found)


def collect(roots, keyword: str = "accuracy", test_log: Optional[bool] = None) -> List[Run]:
    """:func:`read_run` of every run folder under each of ``roots`` (a path or a list)."""
    if isinstance(roots, str):
        roots = [roots]
    runs = []
    for root in roots:
        if not osp.isdir(root):
            raise FileNotFoundError(f"{root} is not a directory: give the output folder of the runs "
                                    "(e.g. output/base2new)")
        runs.extend(read_run(d, keyword, test_log) for d in find_run_dirs(root))
    return runs
