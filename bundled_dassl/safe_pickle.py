"""Read checkpoints that pickle Python objects without executing anything.

``torch.load(weights_only=True)`` refuses every checkpoint that pickles an
object, and real Dassl's (``dassl/utils/torchtools.py``, ``save_checkpoint``
called by ``SimpleTrainer.save_model``) and the official trainers' checkpoints
do: with a warmup schedule, the ``scheduler`` entry holds the successor
scheduler object and, through it, the optimizer object.  Loading those with
``weights_only=False`` would run any code a file asks for (a pickle can call
``os.system``).

:data:`RESTRICTED_PICKLE` is a ``pickle_module`` for ``torch.load`` whose
unpickler resolves only

* plain containers, tensors, dtypes and NumPy scalars / arrays -- built for real
  (the same kinds ``weights_only=True`` accepts);
* optimizer and LR-scheduler classes of torch, Dassl and this engine -- turned
  into :class:`InertObject` records that keep the pickled state as data and
  never run the class's code;

and refuses every other global with :class:`UnsafeCheckpointError`, which
names the file and the class.  Nothing from the file is ever called except
the allow-listed constructors above.
"""
from __future__ import annotations

import _compat_pickle
import collections
import pickle
import sys
from typing import Any

import torch

from gopro_prompts.user_errors import UserError

__all__ = ["InertObject", "UnsafeCheckpointError", "RESTRICTED_PICKLE", "inert_state"]


class UnsafeCheckpointError(UserError):
    """A checkpoint pickles a class that reading it would have to execute."""


class InertObject:
    """A pickled optimizer / scheduler object, kept as data: its class never runs.

    ``pickled_class`` is the dotted name it was pickled as; ``pickled_state``
    what pickle would have handed to its ``__setstate__`` (for torch's
    optimizers and schedulers, a dict of their attributes).
    """

    pickled_class = ""

    def __new__(cls, *args, **kwargs):
        obj = object.__new__(cls)
        obj.__dict__["pickled_state"] = None
        return obj

    def __init__(self, *args, **kwargs):  # REDUCE with arguments: keep nothing, run nothing
        pass

    def __setstate__(self, state):
        self.__dict__["pickled_state"] = state

    def __repr__(self):
        return f"<inert {self.pickled_class}>"


def inert_state(obj) -> dict:
    """The attributes an :class:`InertObject` was pickled with, without ``optimizer``.

    For a torch LR scheduler this is exactly its ``state_dict()`` (torch's
    ``LRScheduler.state_dict`` returns ``__dict__`` minus the optimizer).
    """
    state = obj.pickled_state
    if isinstance(state, tuple) and len(state) == 2:  # (__dict__, slots) form
        state = state[0]
    return {k: v for k, v in (state or {}).items() if k != "optimizer"}


# ---------------------------------------------------------------------------
# What may be resolved
# ---------------------------------------------------------------------------
def _built_for_real() -> dict:
    """``module.name`` -> object for every global that is constructed normally."""
    from torch import _utils

    allowed = {
        "builtins.dict": dict, "builtins.list": list, "builtins.tuple": tuple, "builtins.set": set,
        "builtins.frozenset": frozenset, "builtins.int": int, "builtins.float": float,
        "builtins.bool": bool, "builtins.str": str, "builtins.bytes": bytes,
        "builtins.bytearray": bytearray, "builtins.complex": complex, "builtins.slice": slice,
        "builtins.object": object,
        "collections.OrderedDict": collections.OrderedDict,
        "collections.defaultdict": collections.defaultdict,
        "collections.Counter": collections.Counter,
        "collections.deque": collections.deque,
        "_codecs.encode": _codecs_encode(),
        "torch._utils._rebuild_tensor": _utils._rebuild_tensor,
        "torch._utils._rebuild_tensor_v2": _utils._rebuild_tensor_v2,
        "torch._utils._rebuild_parameter": _utils._rebuild_parameter,
        "torch._utils._rebuild_parameter_with_state": _utils._rebuild_parameter_with_state,
        "torch._tensor._rebuild_from_type_v2": torch._tensor._rebuild_from_type_v2,
        "torch.serialization._get_layout": torch.serialization._get_layout,
        "torch.Size": torch.Size, "torch.device": torch.device, "torch.Tensor": torch.Tensor,
        "torch.nn.parameter.Parameter": torch.nn.Parameter,
    }
    for name in dir(torch):
        value = getattr(torch, name, None)
        if isinstance(value, torch.dtype):
            allowed[f"torch.{name}"] = value
    try:
        import numpy as np

        allowed["numpy.dtype"] = np.dtype
        allowed["numpy.ndarray"] = np.ndarray
        for core in ("numpy.core.multiarray", "numpy._core.multiarray"):
            allowed[f"{core}._reconstruct"] = _numpy_core("_reconstruct")
            allowed[f"{core}.scalar"] = _numpy_core("scalar")
        for name in dir(getattr(np, "dtypes", None) or ()):
            if name.endswith("DType"):
                allowed[f"numpy.dtypes.{name}"] = getattr(np.dtypes, name)
    except ImportError:  # pragma: no cover - numpy ships with torch
        pass
    return allowed


def _codecs_encode():
    import codecs

    return codecs.encode


def _numpy_core(name):
    """``numpy._core.multiarray.<name>`` (``numpy.core`` before NumPy 2): array and scalar rebuilders."""
    try:
        from numpy._core import multiarray
    except ImportError:  # numpy < 2
        from numpy.core import multiarray
    return getattr(multiarray, name)


#: classes kept as :class:`InertObject` when their module is one of these (the
#: optimizers and schedulers that Dassl-style checkpoints pickle)
_INERT_MODULE_PREFIXES = (
    "torch.optim.",
    "dassl.optim.",
    "gopro_prompts.bundled_dassl.optim",
    "bundled_dassl.optim",
)
#: what such a class must derive from (checked on torch's own classes)
_INERT_BASES = (torch.optim.Optimizer, torch.optim.lr_scheduler.LRScheduler)
#: Dassl's classes by name (real Dassl need not be installed to read its files)
_DASSL_INERT_NAMES = {
    "ConstantWarmupScheduler", "LinearWarmupScheduler", "_BaseWarmupScheduler",
    "RAdam", "PlainRAdam", "AdamW",
}


def _inert_class(module: str, name: str):
    """An :class:`InertObject` subclass standing for ``module.name``, or None if not allowed."""
    if not module.startswith(_INERT_MODULE_PREFIXES) or not name.isidentifier():
        return None
    if module.startswith("torch.optim."):
        # resolve only inside torch.optim, which torch has already imported: nothing new runs
        owner = sys.modules.get(module)
        cls = getattr(owner, name, None) if owner is not None else None
        if not (isinstance(cls, type) and issubclass(cls, _INERT_BASES)):
            return None
    elif name not in _DASSL_INERT_NAMES:
        return None
    return _INERT_CLASSES.setdefault(
        f"{module}.{name}",
        type(name, (InertObject,), {"pickled_class": f"{module}.{name}", "__module__": __name__}),
    )


_INERT_CLASSES: dict = {}
_BUILT: dict = {}


def _resolve(module: str, name: str, path: str) -> Any:
    if not _BUILT:
        _BUILT.update(_built_for_real())
    module, name = _compat_pickle.NAME_MAPPING.get((module, name), (module, name))
    module = _compat_pickle.IMPORT_MAPPING.get(module, module)
    qualified = f"{module}.{name}"
    if qualified in _BUILT:
        return _BUILT[qualified]
    inert = _inert_class(module, name)
    if inert is not None:
        return inert
    raise UnsafeCheckpointError(
        f'checkpoint "{path}" pickles {qualified}, which loading would execute: refused. '
        "Use a checkpoint written by this library or Dassl (plain data, optimizers, schedulers), "
        "or re-save the state dict from code you trust"
    )


class _RestrictedUnpickler(pickle.Unpickler):
    """An unpickler whose every global goes through the allow-list (see the module docstring)."""

    #: the file being read, for error messages (set by :func:`restricted_pickle_for`)
    source = "<checkpoint>"

    def find_class(self, module, name):
        return _resolve(module, name, self.source)


class _RestrictedPickleModule:
    """The ``pickle_module`` protocol ``torch.load`` uses: ``Unpickler``, ``load``, ``__name__``."""

    __name__ = "gopro_prompts_restricted_pickle"
    UnpicklingError = pickle.UnpicklingError

    def __init__(self, source: str):
        self.Unpickler = type("Unpickler", (_RestrictedUnpickler,), {"source": source})

    def load(self, file, **kwargs):
        return self.Unpickler(file, **kwargs).load()


def restricted_pickle_for(path: str) -> _RestrictedPickleModule:
    """A ``pickle_module`` for ``torch.load`` of ``path`` (errors name that file)."""
    return _RestrictedPickleModule(str(path))


RESTRICTED_PICKLE = restricted_pickle_for("<checkpoint>")
