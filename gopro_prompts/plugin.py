"""Use our trainers inside an existing Dassl code base (a fork of CoOp, CoCoOp, MaPLe, PromptSRC ...).

Two lines in the host's ``train.py``::

    import gopro_prompts.plugin as gopro_plugin      # with the other imports

    def extend_cfg(cfg):
        ...                                           # the host's own keys
        gopro_plugin.extend_cfg(cfg)                  # last line of the host's extend_cfg

Then ``python train.py --trainer GOPro --config-file .../GOPro/vit_b16.yaml ...``
runs our GOPro with the host's data pipeline, scripts and evaluation.

:func:`extend_cfg` registers GOPro in real Dassl's ``TRAINER_REGISTRY`` and
adds the config keys our code reads that the host lacks (``TRAINER.GOPRO``,
``MODEL.BACKBONE.PATH``, ...).  It adds keys, never changes one the host
has, and leaves the host's registry entries, logging and ``sys.stdout`` alone.
Our other trainers and our dataset readers are registered only when asked
(``trainers=`` / ``datasets=``), under names prefixed with :data:`PREFIX`
so they cannot collide with the host's own ``CoOp`` or ``OxfordPets``.
"""
from __future__ import annotations

from typing import Dict, Iterable, Optional

#: prefix of the registry names of our trainers (other than GOPro) and datasets inside a host
PREFIX = "GP"
#: the trainer a host gets by default, under its own name
HEADLINE = "GOPro"

_RENAMED: Dict[tuple, type] = {}


def extend_cfg(cfg, trainers: Iterable[str] = (HEADLINE,), datasets: Iterable[str] = (),
               names: Optional[Dict[str, str]] = None):
    """Register our trainers (default: GOPro) in the host's Dassl and add the keys they need.

    ``trainers`` / ``datasets``: our class names to register.  GOPro keeps its
    name; the others are registered as ``GP<Name>`` (e.g. ``GPCoOp``,
    ``GPOxfordPets``).  ``names`` overrides the registry name of any of them,
    e.g. ``names={"GOPro": "GOProLab"}`` when the host already has a GOPro.
    Calling it again with the same arguments is a no-op.  Returns ``cfg``.
    """
    from gopro_prompts import dassl_compat

    if dassl_compat.BACKEND != "dassl":
        raise SystemExit(
            "error: gopro_prompts.plugin registers into real Dassl, which is not importable here "
            "(or DASSL_BACKEND forces the bundled engine): install Dassl.pytorch in this environment"
        )
    from gopro_prompts.registry import DATASETS, TRAINERS, add_to_registry
    from gopro_prompts.trainers.config import add_missing_keys

    names = dict(names or {})
    wanted_trainers = list(trainers)
    wanted_datasets = list(datasets)
    if wanted_trainers:
        from gopro_prompts import trainers as _trainers  # noqa: F401  (fills the trainer catalogue)
    if wanted_datasets:
        from gopro_prompts import datasets as _datasets  # noqa: F401  (fills the dataset catalogue)

    plan = [(dassl_compat.TRAINER_REGISTRY, TRAINERS, name, "trainer") for name in wanted_trainers]
    plan += [(dassl_compat.DATASET_REGISTRY, DATASETS, name, "dataset") for name in wanted_datasets]
    nodes = []
    for registry, catalogue, name, kind in plan:
        cls = _lookup(catalogue, name, kind)
        host_name = names.get(name) or (name if name == HEADLINE else PREFIX + name)
        held = registry._obj_map.get(host_name)
        if held is not None and held is not _RENAMED.get((cls, host_name), cls):
            how = (f"e.g. gopro_plugin.extend_cfg(cfg, names={{{name!r}: {(host_name + 'Lab')!r}}}), "
                   f"and run it with --trainer {host_name}Lab" if kind == "trainer" else
                   f"with names={{{name!r}: ...}}")
            raise SystemExit(
                f"error: the host code base already registers a {kind} named {host_name} "
                f"({held.__module__}.{held.__name__}): register ours under another name, {how}"
            )
        add_to_registry(registry, _named(cls, host_name))
        if kind == "trainer" and getattr(cls, "CFG_NODE", ""):
            nodes.append(cls.CFG_NODE)
    add_missing_keys(cfg, nodes=nodes)
    return cfg


def _lookup(catalogue, name, kind):
    from gopro_prompts.user_errors import did_you_mean

    if name not in catalogue:
        raise SystemExit(f"error: gopro_prompts has no {kind} named {name!r}{did_you_mean(name, list(catalogue))}: "
                         f"valid names are {', '.join(catalogue)}")
    return catalogue[name]


def _named(cls, name):
    """``cls`` itself, or (once per name) a subclass called ``name``: class name = registry key."""
    if name == cls.__name__:
        return cls
    key = (cls, name)
    if key not in _RENAMED:
        _RENAMED[key] = type(name, (cls,), {"__module__": cls.__module__, "__qualname__": name,
                                           "__doc__": f"{cls.__name__} of gopro_prompts, registered as {name}."})
    return _RENAMED[key]
