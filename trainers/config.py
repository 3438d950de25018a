"""Config nodes of our trainers, registered from one place.

Each trainer module declares its ``TRAINER.<NODE>`` keys with
:func:`register_trainer_config`; :func:`extend_cfg` adds every registered node
(plus ``DATASET.SUBSAMPLE_CLASSES`` and the MaPLe repository's extra nodes, so
every YAML written for CoOp / CoCoOp / MaPLe merges unchanged) to a Dassl
default config -- the same layering as the official ``train.py``
(dassl-behaviour.md §a.1, §a.4).
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


@register_trainer_config("IVLP")
def _ivlp(node):  # MaPLe repository node (not a trainer here); kept so its YAMLs merge
    node.N_CTX_VISION = 2
    node.N_CTX_TEXT = 2
    node.CTX_INIT = "a photo of a"
    node.PREC = "fp16"
    node.PROMPT_DEPTH_VISION = 9
    node.PROMPT_DEPTH_TEXT = 9


@register_trainer_config("VPT")
def _vpt(node):  # MaPLe repository node (not a trainer here); kept so its YAMLs merge
    node.N_CTX_VISION = 2
    node.CTX_INIT = "a photo of a"
    node.PREC = "fp16"
    node.PROMPT_DEPTH_VISION = 1


def extend_cfg(cfg: CN) -> CN:
    """Add every trainer node and ``DATASET.SUBSAMPLE_CLASSES`` (§a.4)."""
    from gopro_prompts import trainers  # noqa: F401  (registers every trainer and its node)

    for node_name, fill in TRAINER_CONFIGS.items():
        node = CN()
        fill(node)
        cfg.TRAINER[node_name] = node
    cfg.DATASET.SUBSAMPLE_CLASSES = "all"  # all, base or new
    return cfg


def default_cfg() -> CN:
    """Dassl's defaults extended with our nodes (not frozen)."""
    return extend_cfg(get_cfg_default())
