"""Train / evaluate a CLIP prompt-learning method (the CoOp / MaPLe command line).

    python train.py --root DATA --trainer CoOp \
        --dataset-config-file configs/datasets/oxford_pets.yaml \
        --config-file configs/trainers/CoOp/vit_b16_ep50.yaml \
        --output-dir output/... DATASET.NUM_SHOTS 16

With no dataset config (and no ``DATASET.NAME`` in the opts) it runs the
embedded offline default: a procedurally generated dataset, the built-in tiny
CLIP and a small schedule, so ``python train.py --trainer CoOp`` works on a
fresh machine with no data and no download.

Differences from the official ``train.py`` (deliberate fixes):
``--seed 0`` is a valid seed, and an absent ``--seed`` keeps the YAML's SEED
(Dassl forces -1); bad input ends with one line on stderr, not a traceback.
"""
from __future__ import annotations

import argparse
import contextlib
import os
import os.path as osp
import sys
import threading
import traceback

import torch
import yaml

from gopro_prompts.user_errors import UserError, did_you_mean

try:
    from gopro_prompts import dassl_compat
except UserError as _bad_backend:  # DASSL_BACKEND names no usable backend: the CLI's one line, exit code 2
    sys.stderr.write(f"error: {_bad_backend}\n")
    raise SystemExit(2) from None
from gopro_prompts import FROM_SOURCE, cfg_checks, resource_path
from gopro_prompts.dassl_compat import (
    DATASET_REGISTRY, TRAINER_REGISTRY, build_trainer, collect_env_info, get_logger,
    set_random_seed, setup_logger,
)
from gopro_prompts import cli_plugins
from gopro_prompts.results import capture as results_capture
from gopro_prompts.registry import register_all
from gopro_prompts import run_folder
from gopro_prompts.run_lock import RunLock

from gopro_prompts.trainers import distributed, preemption
from gopro_prompts.trainers.base import ClipTrainer
from gopro_prompts.trainers.config import accept_str_or_bool, default_cfg, merge_config_file, offline_config_file

logger = get_logger("train")

#: the embedded offline default (issue: "python train.py --trainer X just works")
OFFLINE_DATASET = "SyntheticShapes"
#: generated on first use: ``data/`` of a source tree, else a per-user cache (never site-packages)
OFFLINE_ROOT = (resource_path("data") if FROM_SOURCE
                else osp.join(osp.expanduser("~"), ".cache", "gopro_prompts", "data"))
OFFLINE_OPTS = (
    "DATASET.NAME", OFFLINE_DATASET,
    "DATASET.NUM_SHOTS", 16,
    "MODEL.BACKBONE.NAME", "tiny-synthetic",
    "INPUT.SIZE", (32, 32),
    "INPUT.INTERPOLATION", "bicubic",
    "INPUT.TRANSFORMS", ["random_resized_crop", "random_flip", "normalize"],
    "INPUT.PIXEL_MEAN", [0.48145466, 0.4578275, 0.40821073],
    "INPUT.PIXEL_STD", [0.26862954, 0.26130258, 0.27577711],
    "DATALOADER.NUM_WORKERS", 0,
    "DATALOADER.TEST.BATCH_SIZE", 100,
    "TRAIN.PRINT_FREQ", 5,
    "SEED", 1,
)
#: environment variable: the folder where the embedded offline default generates its dataset
OFFLINE_ROOT_ENV = "GOPRO_OFFLINE_DATA"


def _offline_root():
    """Where the embedded default's dataset is generated: ``$GOPRO_OFFLINE_DATA``, else :data:`OFFLINE_ROOT`."""
    chosen = os.environ.get(OFFLINE_ROOT_ENV, "").strip()
    return osp.abspath(osp.expanduser(chosen)) if chosen else OFFLINE_ROOT


def _help_epilog():
    """The ``--help`` text after the flags: the trainers, the embedded default, the opts."""
    register_all()
    trainers = ", ".join(TRAINER_REGISTRY.registered_names())
    return (
        f"trainers: {trainers} (a --plugin may add more)\n\n"
        "embedded offline default: with no --dataset-config-file, no --config-file, no --root and no\n"
        "DATASET.NAME, `python train.py --trainer CoOp` trains and tests on a generated dataset\n"
        f"({OFFLINE_DATASET}, written on first use under {_offline_root()}; set {OFFLINE_ROOT_ENV} to move it)\n"
        "with a tiny CLIP built into this repository (tiny-synthetic), a short schedule and output under\n"
        "output/offline/<Trainer>/seed<SEED>/: no data and no download needed.\n\n"
        "real data: --root DATA --dataset-config-file configs/datasets/<name>.yaml\n"
        "--config-file configs/trainers/<Trainer>/<cfg>.yaml (see DATASETS.md).\n\n"
        "opts: KEY VALUE pairs after every --flag, e.g.\n"
        "  python train.py --trainer CoOp --seed 2 OPTIM.LR 0.01 DATASET.NUM_SHOTS 4"
    )


def get_parser():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0], epilog=_help_epilog(),
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--root", type=str, default="", help="path to dataset")
    parser.add_argument("--output-dir", type=str, default="", help="output directory")
    parser.add_argument("--resume", type=str, default="", help="checkpoint directory (from which the training resumes)")
    parser.add_argument("--seed", type=int, default=None, help="random seed (0 is a valid seed)")
    parser.add_argument("--source-domains", type=str, nargs="+", help="source domains for DA/DG")
    parser.add_argument("--target-domains", type=str, nargs="+", help="target domains for DA/DG")
    parser.add_argument("--transforms", type=str, nargs="+", help="data augmentation methods")
    parser.add_argument("--config-file", type=str, default="", help="path to config file")
    parser.add_argument("--dataset-config-file", type=str, default="", help="path to config file for dataset setup")
    parser.add_argument("--trainer", type=str, default="", help="name of trainer")
    parser.add_argument("--backbone", type=str, default="", help="name of CNN backbone")
    parser.add_argument("--head", type=str, default="", help="name of head")
    parser.add_argument("--eval-only", action="store_true", help="evaluation only")
    parser.add_argument("--model-dir", type=str, default="", help="load model from this directory for eval-only mode")
    parser.add_argument("--load-epoch", type=int, help="load model weights at this epoch for evaluation")
    parser.add_argument("--no-train", action="store_true", help="do not call trainer.train()")
    parser.add_argument("--plugin", action="append", default=[], metavar="MODULE_OR_FILE",
                        help="import this module (dotted name) or .py file first, e.g. one that registers "
                             "a Dassl trainer; its extend_cfg(cfg), if defined, runs right after our "
                             "defaults (repeatable)")
    parser.add_argument("opts", default=None, nargs=argparse.REMAINDER,
                        help="modify config options using the command-line")
    return parser


def _merge_file(cfg, path, what):
    if not osp.isfile(path):
        raise UserError(f"{what} not found: {path} (check the path given to --{what.replace(' ', '-')})")
    _check_yaml_mapping(path)
    try:
        merge_config_file(cfg, path)
    except KeyError as exc:
        raise UserError(_unknown_key_message(path, exc, cfg)) from None
    except ValueError as exc:
        raise UserError(f"{path}: {_type_message(exc)}") from None
    except yaml.YAMLError as exc:
        where = getattr(exc, "problem_mark", None)
        line = f" (line {where.line + 1})" if where is not None else ""
        raise UserError(f"{path} is not valid YAML{line}: fix its syntax (nested KEY: VALUE lines)") from None


def _check_yaml_mapping(path):
    """A config file must hold a mapping of KEY: VALUE lines (yacs fails on a list or a scalar
    with "'list' object has no attribute 'items'"); an empty file merges nothing."""
    try:
        with open(path) as f:
            content = yaml.safe_load(f)
    except yaml.YAMLError:
        return  # reported with its line by the merge
    if content is not None and not isinstance(content, dict):
        kind = "a list" if isinstance(content, list) else f"a single value ({type(content).__name__})"
        raise UserError(f"{path} holds {kind}, not a mapping of config keys: write nested KEY: VALUE lines, "
                        "e.g. a line OPTIM: followed by an indented line LR: 0.002")


def _parser_flags():
    """``{--flag: its argparse action}`` for every flag of :func:`get_parser`."""
    return {s: action for action in get_parser()._actions for s in action.option_strings}


def _check_no_flags_in_opts(opts, source):
    """A ``--flag`` after the KEY VALUE opts lands in them (argparse's REMAINDER): name it as misplaced."""
    flags = _parser_flags()
    for i, token in enumerate(opts):
        text = str(token)
        if not text.startswith("--") or text == "--":
            continue
        flag = text.split("=", 1)[0]
        first_opt = next((str(t) for t in opts if not str(t).startswith("-")), "")
        if flag in flags:
            takes_value = flags[flag].nargs != 0 and "=" not in text and i + 1 < len(opts)
            moved = f"{text} {opts[i + 1]}" if takes_value else text
            raise UserError(f"{flag} must come before the KEY VALUE opts (it follows {first_opt} in the {source}): "
                            f"move '{moved}' before {first_opt}; every --flag goes before the opts")
        raise UserError(f"{flag} is not a flag of train.py{did_you_mean(flag, flags)} (found among the {source}): "
                        "see python train.py --help, and put every flag before the KEY VALUE opts")


def _decode_opt(value):
    """An opts value as yacs' ``merge_from_list`` reads it (a Python literal, else the string)."""
    from yacs.config import CfgNode

    return CfgNode._decode_cfg_value(value)


def _merge_opts(cfg, opts, source):
    if not opts:
        return
    _check_no_flags_in_opts(list(opts), source)
    if len(opts) % 2:
        raise UserError(
            f"{source}: KEY VALUE pairs expected, got an odd number of tokens {list(opts)} "
            "(put every --flag before the KEY VALUE pairs)"
        )
    try:
        pairs = list(opts)
        accept_str_or_bool(cfg, {str(k): _decode_opt(v) for k, v in zip(pairs[0::2], pairs[1::2])})
        cfg.merge_from_list(pairs)
    except (KeyError, AssertionError) as exc:
        if "Non-existent" in str(exc):  # yacs: KeyError from files, AssertionError from opts
            raise UserError(_unknown_key_message(source, exc, cfg)) from None
        raise UserError(f"{source}: {_type_message(exc)}") from None
    except ValueError as exc:
        raise UserError(f"{source}: {_type_message(exc)}") from None


def _unknown_key_message(source, exc, cfg):
    """``SOURCE: unknown config key K (did you mean ...?)`` from yacs' "Non-existent ... key: K"."""
    text = str(exc.args[0] if exc.args else exc)
    key = text.rsplit(":", 1)[-1].strip() if ":" in text else text
    return (f"{source}: unknown config key {key}{did_you_mean(key, list(run_folder.flatten_cfg(cfg)))}: check its spelling "
            "against the defaults (python train.py --trainer X --no-train prints the config)")


def _type_message(exc):
    """yacs' type mismatch in words: ``KEY must be a float (default 0.002), got 'abc' (str)``."""
    import re

    text = str(exc)
    match = re.search(r"Type mismatch \(<class '(\w+)'> vs\. <class '(\w+)'>\) with values "
                      r"\((.*) vs\. (.*)\) for config key: (\S+)", text)
    if not match:
        return f"{text} (e.g. write 1.0 for a float key, 5 for an int key)"
    want, got, default, value, key = match.groups()
    article = "an" if want[:1] in "aeiou" else "a"
    return (f"{key} must be {article} {want} (it was {default}), got {value!r} ({got}): "
            "e.g. write 1.0 for a float key, 5 for an int key, True/False for a bool key")


def reset_cfg(cfg, args):
    if args.root:
        cfg.DATASET.ROOT = args.root
    if args.output_dir:
        cfg.OUTPUT_DIR = args.output_dir
    if args.resume:
        cfg.RESUME = args.resume
    if args.seed is not None:  # deliberate fix: Dassl ignores --seed 0
        cfg.SEED = args.seed
    if args.source_domains:
        cfg.DATASET.SOURCE_DOMAINS = args.source_domains
    if args.target_domains:
        cfg.DATASET.TARGET_DOMAINS = args.target_domains
    if args.transforms:
        cfg.INPUT.TRANSFORMS = args.transforms
    if args.trainer:
        cfg.TRAINER.NAME = args.trainer
    if args.backbone:
        cfg.MODEL.BACKBONE.NAME = args.backbone
    if args.head:
        cfg.MODEL.HEAD.NAME = args.head


def _build_cfg(args, offline, plugins=()):
    cfg = default_cfg()
    cli_plugins.extend_cfg(plugins, cfg)  # a --plugin's keys, before any file or opt is merged
    if offline:
        cfg.DATASET.ROOT = _offline_root()
        _merge_opts(cfg, list(OFFLINE_OPTS), "offline defaults")
        trainer_cls = _trainer_class(args.trainer or cfg.TRAINER.NAME)
        schedule = offline_config_file(trainer_cls.__name__)
        if osp.isfile(schedule):  # a --plugin's trainer may have none
            _merge_file(cfg, schedule, "offline schedule")
    if args.dataset_config_file:
        _merge_file(cfg, args.dataset_config_file, "dataset config file")
    if args.config_file:
        _merge_file(cfg, args.config_file, "config file")
    reset_cfg(cfg, args)
    _merge_opts(cfg, args.opts, "command-line opts")
    if offline and not args.output_dir and not _opts_set(args.opts, "OUTPUT_DIR"):
        cfg.OUTPUT_DIR = run_folder.offline_output_dir(args, cfg)  # a folder per set of overrides
    return cfg


def _opts_set(opts, key):
    return bool(opts) and key in list(opts)[::2]


def _trainer_class(name):
    names = TRAINER_REGISTRY.registered_names()
    if not name:
        raise UserError(f"no trainer given: use --trainer with one of {', '.join(names)}")
    if name not in names:
        raise UserError(f"unknown trainer {name!r}{did_you_mean(name, names)}: valid trainers are {', '.join(names)}"
                        f"{cli_plugins.other_backend_hint(name)}")
    return TRAINER_REGISTRY.get(name)


def _check_embedded_default_asked(args):
    """The embedded offline default runs only when the command names no data at all.

    A ``--root`` or ``--config-file`` without a dataset is a forgotten
    ``--dataset-config-file``: say so rather than train on generated data
    (and never generate it inside the user's data folder).
    """
    if args.dataset_config_file:
        raise UserError(f"{args.dataset_config_file} sets no DATASET.NAME: add a line DATASET: followed by an indented "
                        "line NAME: <Name> (as in configs/datasets/*.yaml)")
    given = [flag for flag, value in (("--root", args.root), ("--config-file", args.config_file)) if value]
    if _opts_set(args.opts, "DATASET.ROOT"):
        given.append("DATASET.ROOT")
    if given:
        raise UserError(
            f"{' and '.join(given)} given without --dataset-config-file: add --dataset-config-file "
            "configs/datasets/<name>.yaml (e.g. oxford_pets.yaml) or DATASET.NAME <Name>; the embedded offline "
            f"default (generated data) runs only without {', '.join(given)}"
        )


def setup_cfg(args):
    """The config, layered as the official train.py (Dassl's ``tools/train.py`` ``setup_cfg``), then checked.

    The ``--plugin`` modules are imported first (once per process), so the
    trainers they register are known.
    """
    register_all()  # ours first: a plugin that takes one of our names fails at its own import
    plugins = cli_plugins.load_plugins(getattr(args, "plugin", None) or [])
    cfg = _build_cfg(args, offline=False, plugins=plugins)
    offline = not cfg.DATASET.NAME
    if offline:
        _check_embedded_default_asked(args)
        cfg = _build_cfg(args, offline=True, plugins=plugins)
    trainer_cls = _trainer_class(cfg.TRAINER.NAME)
    datasets_known = DATASET_REGISTRY.registered_names()
    if cfg.DATASET.NAME not in datasets_known:
        raise UserError(
            f"unknown dataset {cfg.DATASET.NAME!r}{did_you_mean(cfg.DATASET.NAME, datasets_known)}: "
            f"valid datasets are {', '.join(datasets_known)}"
        )
    trains = not args.eval_only and not args.no_train and cfg_checks.trainer_trains(trainer_cls)
    cfg_checks.check_run_cfg(cfg, trains=trains)
    cfg.freeze()
    return cfg, offline


def print_args(args, cfg):
    print("***************")
    print("** Arguments **")
    print("***************")
    for key in sorted(args.__dict__):
        print(f"{key}: {args.__dict__[key]}")
    print("************")
    print("** Config **")
    print("************")
    print(cfg)


def main(argv=None):
    """Run like the command line; returns the trainer (or the test result for eval-only).

    Under ``torchrun`` every process runs this; it joins the process group
    (trainers/distributed.py) and only rank 0 prints and writes ``log.txt``.
    """
    args = get_parser().parse_args(argv)
    cfg, offline = setup_cfg(args)
    if args.eval_only and not args.output_dir and not _opts_set(args.opts, "OUTPUT_DIR"):
        # never the training run's folder: a sub-folder of the model folder (run_folder.eval_output_dir)
        cfg = run_folder.with_output_dir(cfg, run_folder.eval_output_dir(cfg, args.model_dir, args.load_epoch))
    dist_info = distributed.init_from_env(use_cuda=cfg.USE_CUDA)
    try:
        # one live run per output folder (only rank 0 writes into it under torchrun)
        with _quiet_unless_main(dist_info), RunLock(cfg.OUTPUT_DIR, enabled=dist_info.rank == 0):
            return _run(args, cfg, offline)
    finally:
        distributed.cleanup()


@contextlib.contextmanager
def _quiet_unless_main(dist_info):
    """Ranks other than 0 print nothing (their stdout goes to /dev/null); errors still reach stderr."""
    if dist_info.rank == 0:
        yield
        return
    with open(os.devnull, "w") as devnull, contextlib.redirect_stdout(devnull):
        yield


def _run(args, cfg, offline):
    training = not (args.eval_only or args.no_train)
    # before anything is written into the folder (setup_logger creates a log file)
    if args.eval_only:
        run_folder.check_eval_folder(cfg.OUTPUT_DIR)
    elif training:
        run_folder.check_training_folder(cfg)
    if cfg.SEED >= 0:
        print(f"Setting fixed seed: {cfg.SEED}")
        set_random_seed(cfg.SEED)
    if distributed.is_main_process():
        setup_logger(cfg.OUTPUT_DIR)
    if torch.cuda.is_available() and cfg.USE_CUDA:
        torch.backends.cudnn.benchmark = True
    print_args(args, cfg)
    print("Collecting env info ...")
    print("** System info **\n{}\n".format(collect_env_info()))
    logger.info("Dassl backend: %s", dassl_compat.BACKEND)
    cfg_checks.log_config_warnings(cfg, TRAINER_REGISTRY.get(cfg.TRAINER.NAME))  # into log.txt too
    if offline:
        logger.info(
            "No dataset config given: running the embedded offline default (dataset %s under %s, "
            "backbone %s, output %s)", cfg.DATASET.NAME, cfg.DATASET.ROOT, cfg.MODEL.BACKBONE.NAME,
            cfg.OUTPUT_DIR,
        )
    try:
        trainer = build_trainer(cfg)
        if not isinstance(trainer, ClipTrainer):  # e.g. a --plugin's trainer: results.json all the same
            results_capture.attach(trainer)
        trainer.run_info = {
            "config_file": args.config_file, "dataset_config_file": args.dataset_config_file,
            "eval_only": args.eval_only, "model_dir": args.model_dir, "load_epoch": args.load_epoch,
        }
        if args.eval_only:
            trainer.load_model(args.model_dir, epoch=args.load_epoch)
            return trainer.test()
        if training:
            if distributed.is_main_process():  # the record of this folder's run, once it has resumed
                run_folder.record_after_resume(trainer, cfg)
            trainer.train()
            if distributed.is_main_process():  # a trainer whose train() has no before_train (zero-shot)
                run_folder.write_record(cfg)
        return trainer
    finally:
        sys.stdout.flush()  # everything printed so far reaches log.txt


#: What :func:`cli` reports as one line instead of a traceback: bad input (UserError, and the
#: ValueError / OSError the engine raises for bad values and unreadable or unwritable files)
#: and numerical faults (a non-finite loss, ClipTrainer._check_finite).
REPORTED_ERRORS = (UserError, OSError, ValueError, FloatingPointError)


def cli(argv=None):
    """Entry point: bad input -> one line on stderr and exit code 2 (130 when interrupted).

    The full traceback of an error that is not a :class:`UserError` still goes
    to the run's log file, for bug reports.
    """
    stdout_before = sys.stdout
    # SIGTERM / SIGUSR1 save the training state and exit 128 + signal (trainers/preemption.py);
    # under torchrun every rank would save on its own: there the default handling stays
    guard = not distributed.launched_by_torchrun() and threading.current_thread() is threading.main_thread()
    try:
        with preemption.guarded(enabled=guard):
            main(argv)
    except preemption.Preempted as exc:
        line = exc.message()
        print(line)  # reaches the run's log.txt when its tee is still there
        sys.stdout.flush()
        sys.__stderr__.write(line + "\n")
        return exc.exit_code
    except REPORTED_ERRORS as exc:
        message = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        if sys.stdout is not stdout_before:  # this run's setup_logger ran: its log gets the reason
            _to_log_file(exc, f"error: {message}")
        sys.__stderr__.write(f"error: {message}\n")
        return 2
    except KeyboardInterrupt:
        sys.__stderr__.write("interrupted: the last saved checkpoint is intact; run the same command "
                             "again to resume from it\n")
        return 130
    return 0


def _to_log_file(exc, line):
    """Append ``line`` (and the traceback, unless it is a UserError) to the log file only."""
    log = getattr(sys.stdout, "file", None)  # the tee of setup_logger (bundled and real Dassl)
    if log is None or getattr(log, "closed", True):
        return
    try:
        if not isinstance(exc, UserError):
            log.write("".join(traceback.format_exception(type(exc), exc, exc.__traceback__)))
        log.write(line + "\n")
        log.flush()
    except (OSError, ValueError):
        pass


if __name__ == "__main__":
    sys.exit(cli())
