"""Config nodes of our trainers, registered from one place.

Each trainer module declares its ``TRAINER.<NODE>`` keys with
:func:`register_trainer_config`; :func:`extend_cfg` adds every registered node
(plus ``MODEL.BACKBONE.PATH``, ``DATASET.SUBSAMPLE_CLASSES``, ``DATASET.IMAGE_FOLDER`` and the MaPLe
repository's extra nodes, so every YAML written for CoOp / CoCoOp / MaPLe
merges unchanged) to a Dassl default config: the layering of the official
CoOp ``train.py`` (``get_cfg_default()``, then ``extend_cfg(cfg)``, then the
dataset and method YAMLs, then the command-line opts).  Inside another code
base, :func:`add_missing_keys` adds only what that code base lacks.
"""
from __future__ import annotations

from typing import Callable, Dict

from yacs.config import CfgNode as CN

from gopro_prompts.dassl_compat import get_cfg_default

#: node name (upper case, e.g. "COOP") -> function(node) that fills its keys
TRAINER_CONFIGS: Dict[str, Callable[[CN], None]] = {}


def register_trainer_config(node_name: str):
    """Decorator: ``fill(node)`` sets the defaults of ``TRAINER.<node_name>``."""

    def wrap(fill):
        if node_name in TRAINER_CONFIGS and TRAINER_CONFIGS[node_name] is not fill:
            raise KeyError(f"TRAINER.{node_name} is registered twice")
        TRAINER_CONFIGS[node_name] = fill
        return fill

    return wrap


#: keys outside TRAINER that our code reads and Dassl's defaults lack: key path -> default
EXTRA_KEYS = {
    ("MODEL", "BACKBONE", "PATH"): "",  # a local CLIP file, instead of MODEL.BACKBONE.NAME
    ("DATASET", "SUBSAMPLE_CLASSES"): "all",  # all, base or new (the CoCoOp repository's key)
    # the ImageFolder dataset (datasets/image_folder.py, DATASETS.md section ImageFolder): the user's own images
    ("DATASET", "IMAGE_FOLDER", "DIR"): "",  # the image folder, under DATASET.ROOT (or an absolute path)
    ("DATASET", "IMAGE_FOLDER", "NAME"): "",  # display name in results and output folders; "": DIR's base name
    ("DATASET", "IMAGE_FOLDER", "CSV"): "",  # a CSV of path,classname[,split] in DIR; "": labels.csv if present
    ("DATASET", "IMAGE_FOLDER", "SPLIT_DIR"): "",  # where the split file and few-shot caches go; "": DIR
    # (when DIR is read-only: <OUTPUT_DIR>/image_folder_split)
    # ProGrad's top-level node (its train.py): NAME "prograd" selects its loss, T the
    # distillation temperature, LAMBDA the strength of the gradient projection
    ("LOSS", "NAME"): "",
    ("LOSS", "T"): 1.0,
    ("LOSS", "LAMBDA"): 1.0,
}

#: keys that published YAMLs set to a string or a bool: TRAINER.COOP.CTX_INIT is CoOp's
#: phrase, and ``True`` ("the dataset's template phrase") in KgCoOp's and ProGrad's configs
STR_OR_BOOL_KEYS = ("TRAINER.COOP.CTX_INIT",)


def accept_str_or_bool(cfg: CN, values: Dict[str, object]) -> None:
    """Before merging ``values`` (dotted key -> new value): let a :data:`STR_OR_BOOL_KEYS` key change
    between str and bool, which yacs' merge would refuse as a type change."""
    for key in STR_OR_BOOL_KEYS:
        if key not in values:
            continue
        *path, leaf = key.split(".")
        node = cfg
        for part in path:
            if part not in node:
                break
            node = node[part]
        else:
            new = values[key]
            if leaf in node and isinstance(new, (str, bool)) and isinstance(node[leaf], (str, bool)):
                if node.is_frozen():
                    continue
                node[leaf] = new


def merge_config_file(cfg: CN, path: str) -> None:
    """``cfg.merge_from_file(path)``, where a :data:`STR_OR_BOOL_KEYS` key may change between str and bool."""
    import yaml

    with open(path) as f:
        content = yaml.safe_load(f)
    values = {}
    for key in STR_OR_BOOL_KEYS:
        node = content
        for part in key.split("."):
            node = node.get(part) if isinstance(node, dict) else None
        if node is not None:
            values[key] = node
    accept_str_or_bool(cfg, values)
    cfg.merge_from_file(path)


def add_missing_keys(cfg: CN, nodes=None) -> CN:
    """Add our keys that ``cfg`` lacks; never change a key it already has.

    ``nodes``: the ``TRAINER.<NODE>`` names to add (default: every registered
    one).  A node the config already has (a host code base's own
    ``TRAINER.COOP``) only gains the keys it is missing.
    """
    for path, default in EXTRA_KEYS.items():
        node = cfg
        for key in path[:-1]:
            if key not in node:
                node[key] = CN()
            node = node[key]
        if path[-1] not in node:
            node[path[-1]] = default
    for node_name in (TRAINER_CONFIGS if nodes is None else nodes):
        defaults = CN()
        TRAINER_CONFIGS[node_name](defaults)
        if node_name not in cfg.TRAINER:
            cfg.TRAINER[node_name] = defaults
        else:
            _fill_missing(cfg.TRAINER[node_name], defaults)
    return cfg


def _fill_missing(node: CN, defaults: CN) -> None:
    for key, value in defaults.items():
        if key not in node:
            node[key] = value
        elif isinstance(value, CN) and isinstance(node[key], CN):
            _fill_missing(node[key], value)


def extend_cfg(cfg: CN) -> CN:
    """Every trainer node, ``MODEL.BACKBONE.PATH`` and ``DATASET.SUBSAMPLE_CLASSES`` (the official
    ``train.py``'s ``extend_cfg`` hook, for all of our trainers)."""
    from gopro_prompts import trainers  # noqa: F401  (every trainer module declares its node)

    return add_missing_keys(cfg)


def default_cfg() -> CN:
    """Dassl's defaults extended with our keys (not frozen); our trainers and datasets registered."""
    from gopro_prompts.registry import register_all

    register_all()
    return extend_cfg(get_cfg_default())


def offline_config_file(trainer_name: str) -> str:
    """``configs/offline/<trainer>.yaml``: the embedded offline default's schedule for a trainer.

    The path is returned even when the file does not exist (a ``--plugin``'s trainer has none).
    """
    from gopro_prompts import resource_path

    return resource_path("configs", "offline", f"{trainer_name}.yaml")
