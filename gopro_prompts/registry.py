"""Our trainers and datasets, and how they enter Dassl's registries.

Importing a trainer or dataset module registers nothing in Dassl: inside
another code base (its own ``CoOp`` trainer, its own ``OxfordPets`` dataset)
that would clash.  The modules only add their classes to the catalogues here,
with :func:`register_trainer` / :func:`register_dataset`.  Then:

* our ``train.py`` (and :func:`gopro_prompts.trainers.config.default_cfg`) calls
  :func:`register_all`, which puts every catalogued class into the backend's
  ``TRAINER_REGISTRY`` / ``DATASET_REGISTRY`` under its own name;
* a host code base registers only what it asks for (:mod:`gopro_prompts.plugin`).

Registering the same class under the same name again is a no-op; another
object under a taken name is refused with one line (Dassl's ``Registry``
raises a bare ``KeyError`` there).
"""
from __future__ import annotations

from typing import Dict, Type

from gopro_prompts.user_errors import UserError

#: name -> class of every trainer / dataset defined in this package
TRAINERS: Dict[str, type] = {}
DATASETS: Dict[str, type] = {}


def _catalogue(table: Dict[str, type], kind: str):
    def add(cls: Type) -> Type:
        held = table.get(cls.__name__)
        if held is not None and held is not cls:
            raise KeyError(f"two {kind} classes are named {cls.__name__}: {held.__module__} and {cls.__module__}")
        table[cls.__name__] = cls
        return cls

    return add


#: class decorator: catalogue a trainer (class name = registry key = config folder name)
register_trainer = _catalogue(TRAINERS, "trainer")
#: class decorator: catalogue a dataset reader
register_dataset = _catalogue(DATASETS, "dataset")


def add_to_registry(registry, obj, name: str = "") -> None:
    """Register ``obj`` in a Dassl ``Registry`` under ``name`` (default: its class name), once.

    Works on real Dassl's and the bundled engine's ``Registry`` (both keep
    ``_obj_map`` and ``_do_register``, see Dassl's ``dassl/utils/registry.py``).
    """
    name = name or obj.__name__
    held = registry._obj_map.get(name)
    if held is obj:
        return
    if held is not None:
        raise UserError(
            f"{registry._name} registry: the name {name} is already taken by {held.__module__}.{held.__name__}, "
            f"so {obj.__module__}.{obj.__name__} cannot be registered under it: register ours under another name"
        )
    registry._do_register(name, obj)


def register_all() -> None:
    """Every trainer and dataset of this package into the backend's registries (our own harness)."""
    from gopro_prompts import datasets, trainers  # noqa: F401  (fill the catalogues)
    from gopro_prompts.dassl_compat import DATASET_REGISTRY, TRAINER_REGISTRY

    for cls in TRAINERS.values():
        add_to_registry(TRAINER_REGISTRY, cls)
    for cls in DATASETS.values():
        add_to_registry(DATASET_REGISTRY, cls)
