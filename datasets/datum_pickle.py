"""Reading and writing the pickled dataset caches of CoOp / CoCoOp / MaPLe.

Two kinds of files hold pickled :class:`Datum` objects:

* the few-shot caches ``split_fewshot/shot_{K}-seed_{SEED}.pkl``;
* ImageNet's ``preprocessed.pkl``.

Real Dassl pickles them with protocol 5 and records each ``Datum`` by its class
path ``dassl.data.datasets.base_dataset.Datum``; an object is restored by
creating the instance without calling its constructor and setting its
``_impath``, ``_label``, ``_domain`` and ``_classname`` attributes.

To keep those files interchangeable between the two backends of
:mod:`dassl_compat`:

* :func:`save_datum_pickle` always writes that Dassl class path, even under the
  bundled engine, so that CoOp / MaPLe runs with real Dassl read our caches;
* :func:`load_datum_pickle` maps the Dassl path (and any path of the bundled engine's ``Datum``)
  to the current backend's ``Datum``, so caches written by either side load
  under both.

Deliberate hardening (not in Dassl, which uses a plain ``pickle.load``): the
reader resolves no other global than ``Datum`` (plus numpy scalars), so a cache
cannot run arbitrary code; a truncated or foreign file gives a one-line error
that names it and says how to fix it.
"""
from __future__ import annotations

import copyreg
import io
import os
import pickle
import uuid

from gopro_prompts.dassl_compat import Datum
from gopro_prompts.user_errors import UserError

__all__ = [
    "DASSL_DATUM_MODULE",
    "DASSL_DATUM_NAME",
    "CacheError",
    "dump_datum_pickle",
    "load_datum_pickle",
    "save_datum_pickle",
]

#: Where real Dassl 0.6.3 defines ``Datum``; the class path recorded in every cache.
DASSL_DATUM_MODULE = "dassl.data.datasets.base_dataset"
DASSL_DATUM_NAME = "Datum"

#: Protocol used by CoOp (``pickle.HIGHEST_PROTOCOL`` on Python >= 3.8).
PROTOCOL = 5

# Globals (besides Datum) that may legitimately appear in a cache: numpy
# scalars, in case a label or path was stored as a numpy value.
_SAFE_GLOBALS = {
    ("numpy.core.multiarray", "scalar"),
    ("numpy._core.multiarray", "scalar"),
    ("numpy", "dtype"),
}


class CacheError(UserError, ValueError):
    """A dataset cache or split file exists but cannot be used (corrupt, foreign)."""


_STATE_KEYS = ["_impath", "_label", "_domain", "_classname"]


def _datum_state(item) -> dict:
    # The instance dict of Dassl's Datum, in its attribute order (``base_dataset.py`` ``Datum.__init__``).
    # Reusing the object's own dict (as object.__getstate__ does) avoids a copy
    # per item when pickling ImageNet's 1.3M entries.
    state = getattr(item, "__dict__", None)
    if state is not None and list(state) == _STATE_KEYS:
        return state
    return {
        "_impath": item.impath,
        "_label": item.label,
        "_domain": item.domain,
        "_classname": item.classname,
    }


def _reduce_datum(item):
    # Same reduction as ``object.__reduce_ex__(5)`` on Dassl's Datum:
    # NEWOBJ of the class with no arguments, then BUILD with the state dict.
    return copyreg.__newobj__, (type(item),), _datum_state(item)


class _DasslPathPickler(pickle._Pickler):
    """Pure-Python pickler that records ``Datum`` as ``dassl...base_dataset.Datum``.

    The C pickler cannot write a class under a path that does not import to
    that very class; the pure-Python one lets :meth:`save_global` write the
    reference itself (protocol >= 4 form: two strings + STACK_GLOBAL + MEMOIZE,
    exactly what the C pickler writes for real Dassl's ``Datum``).
    """

    def __init__(self, file):
        super().__init__(file, protocol=PROTOCOL)
        self.dispatch_table = copyreg.dispatch_table.copy()
        self.dispatch_table[Datum] = _reduce_datum

    def save_global(self, obj, name=None):
        if obj is Datum:
            self.save(DASSL_DATUM_MODULE)
            self.save(DASSL_DATUM_NAME)
            self.write(pickle.STACK_GLOBAL)
            self.memoize(obj)
            return
        super().save_global(obj, name)


def _datum_has_dassl_path() -> bool:
    return (
        getattr(Datum, "__module__", None) == DASSL_DATUM_MODULE
        and getattr(Datum, "__qualname__", None) == DASSL_DATUM_NAME
    )


def dump_datum_pickle(obj) -> bytes:
    """Pickle ``obj`` (dicts/lists of Datum) with protocol 5 and the Dassl class path."""
    if _datum_has_dassl_path():
        # Real Dassl backend: the fast C pickler already writes that path.
        return pickle.dumps(obj, protocol=PROTOCOL)
    buffer = io.BytesIO()
    _DasslPathPickler(buffer).dump(obj)
    return buffer.getvalue()


def save_datum_pickle(obj, path: str) -> None:
    """Write ``obj`` to ``path`` like CoOp does (highest pickle protocol), atomically.

    Deliberate improvement: the bytes go to a temporary file in the same folder
    that is then renamed, so an interrupted run or two runs sharing a seed never
    leave a truncated cache behind.
    """
    data = dump_datum_pickle(obj)
    # a name of its own per writer: two threads of one process share the pid
    tmp_path = f"{path}.tmp{os.getpid()}-{uuid.uuid4().hex[:8]}"
    try:
        with open(tmp_path, "wb") as f:
            f.write(data)
        os.replace(tmp_path, path)
    finally:
        if os.path.exists(tmp_path):
            os.remove(tmp_path)


class _DatumUnpickler(pickle.Unpickler):
    """Unpickler that maps any recorded ``Datum`` path to the current backend's class."""

    def __init__(self, file, path):
        super().__init__(file)
        self._path = path

    def find_class(self, module, name):
        if name == DASSL_DATUM_NAME and (
            module == DASSL_DATUM_MODULE
            or "bundled_dassl" in module.split(".")
        ):
            return Datum
        if (module, name) in _SAFE_GLOBALS:
            return super().find_class(module, name)
        raise CacheError(
            f"{self._path} holds a {module}.{name} object, but dataset caches may only "
            f"contain Datum objects: it is not a CoOp/Dassl cache; delete or move it"
        )


def load_datum_pickle(path: str):
    """Read a cache written by CoOp / MaPLe (real Dassl) or by this project.

    Datum objects are restored without calling their constructor (so image
    files are not re-checked here; see ``coop_common.check_cached_images``).
    """
    try:
        with open(path, "rb") as f:
            return _DatumUnpickler(f, path).load()
    except CacheError:
        raise
    except (pickle.UnpicklingError, EOFError, AttributeError, ImportError, IndexError,
            TypeError, ValueError) as err:
        raise CacheError(
            f"Cannot read the dataset cache {path} ({type(err).__name__}: {err}): the file "
            f"is corrupt or truncated; delete it and it is re-created on the next run"
        ) from None
