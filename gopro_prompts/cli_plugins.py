"""``train.py --plugin MODULE_OR_FILE``: run a trainer from another code base in our harness.

A plugin is a Python module, given by dotted name (``my_lab.trainers.fancy``,
importable from ``sys.path``) or by the path of a ``.py`` file.  Importing it
typically registers a Dassl trainer (a ``TrainerX`` subclass) in
``TRAINER_REGISTRY``; that trainer then runs with our data pipeline, our
command line and our ``results.json``.  If the module defines
``extend_cfg(cfg)``, it is called on the config right after our defaults and
before the dataset / method config files and the command-line opts (the
place of ``extend_cfg`` in the official CoOp ``train.py``), so it can add the
trainer's own keys.

A file is imported under a private module name derived from its absolute
path (two files called ``plugin.py`` in different folders do not clash), and
each plugin is imported once per process however often it is named.

Every failure (no such file or module, an exception while importing it, an
``extend_cfg`` that is not callable or raises) is a :class:`UserError` naming
the plugin and the fix, so ``train.py`` prints one ``error:`` line.
"""
from __future__ import annotations

import hashlib
import importlib
import importlib.util
import os
import os.path as osp
import re
import sys
from types import ModuleType
from typing import Iterable, List, Tuple

from gopro_prompts.logs import get_logger
from gopro_prompts.user_errors import UserError

logger = get_logger("plugins")

#: prefix of the module names given to plugins imported from a file path
FILE_MODULE_PREFIX = "_gopro_plugin_"
_DOTTED = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*(\.[A-Za-z_][A-Za-z0-9_]*)*$")


def is_file_spec(spec: str) -> bool:
    """A path (ends with ``.py`` or contains a path separator), not a dotted module name."""
    return spec.endswith(".py") or os.sep in spec or (os.altsep is not None and os.altsep in spec)


def file_module_name(path: str) -> str:
    """The private, stable module name of the plugin file ``path`` (absolute)."""
    stem = re.sub(r"\W", "_", osp.splitext(osp.basename(path))[0]) or "plugin"
    digest = hashlib.sha1(path.encode("utf-8")).hexdigest()[:10]
    return f"{FILE_MODULE_PREFIX}{stem}_{digest}"


def _describe(exc: BaseException) -> str:
    text = str(exc.args[0] if isinstance(exc, KeyError) and exc.args else exc).strip().splitlines()
    return f"{type(exc).__name__}: {text[0]}" if text else type(exc).__name__


def _import_failed(spec: str, exc: BaseException, fix: str) -> UserError:
    missing = getattr(exc, "name", None) or "" if isinstance(exc, ModuleNotFoundError) else ""
    if missing.split(".")[0] == "dassl":
        fix = ("the plugin imports real Dassl, which is not installed here: take its Dassl names from "
               "gopro_prompts.dassl_compat (real Dassl or the bundled engine, whichever runs), or install Dassl.pytorch")
    elif missing:
        fix = f"install what the plugin needs ({missing}), or fix its imports"
    elif isinstance(exc, KeyError) and "already registered" in str(exc):
        # Dassl's Registry refuses a second object under a taken name (ours are registered first)
        fix = ("a trainer or dataset of that name exists already (ours, or another plugin's): "
               "give the plugin's class another name")
    return UserError(f"--plugin {spec}: importing it failed with {_describe(exc)}: {fix}")


def _import_file(spec: str) -> ModuleType:
    path = osp.abspath(osp.expanduser(spec))
    if not osp.isfile(path):
        raise UserError(f"--plugin {spec}: no such file ({path}): give the path of a .py file, "
                        "or the dotted name of a module importable from PYTHONPATH")
    if not path.endswith(".py"):
        raise UserError(f"--plugin {spec}: not a .py file: give the path of a Python source file")
    name = file_module_name(path)
    module = sys.modules.get(name)
    if module is not None:
        return module
    module_spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(module_spec)
    sys.modules[name] = module  # before executing it, as an import does (dataclasses, pickling)
    try:
        module_spec.loader.exec_module(module)
    except BaseException as exc:
        sys.modules.pop(name, None)
        if isinstance(exc, (KeyboardInterrupt, SystemExit)):
            raise
        raise _import_failed(spec, exc, f"fix the plugin file (python {path} shows the traceback)") from exc
    return module


def _import_dotted(spec: str) -> ModuleType:
    if not _DOTTED.match(spec):
        raise UserError(f"--plugin {spec!r}: neither a .py file path nor a dotted module name "
                        "(e.g. my_lab.trainers.fancy)")
    try:
        return importlib.import_module(spec)
    except ModuleNotFoundError as exc:
        missing = exc.name or ""
        if missing and (spec == missing or spec.startswith(missing + ".")):
            raise UserError(f"--plugin {spec}: no module named {missing!r}: put the folder that contains it "
                            "on PYTHONPATH (or pip install it), or give the path of its .py file") from exc
        raise _import_failed(spec, exc, "install what the plugin needs, or fix its imports") from exc
    except (KeyboardInterrupt, SystemExit):
        raise
    except BaseException as exc:
        raise _import_failed(spec, exc, f"fix the plugin (python -c 'import {spec}' shows the traceback)") from exc


def load_plugins(specs: Iterable[str]) -> List[Tuple[str, ModuleType]]:
    """Import every plugin (once per process); returns ``(spec, module)`` pairs in order.

    An ``extend_cfg`` attribute that is not callable is refused here, before
    any config is built.
    """
    loaded = []
    for spec in specs or ():
        spec = str(spec).strip()
        if not spec:
            raise UserError("--plugin needs a module name or a .py file path, got an empty string")
        module = _import_file(spec) if is_file_spec(spec) else _import_dotted(spec)
        hook = getattr(module, "extend_cfg", None)
        if hook is not None and not callable(hook):
            raise UserError(f"--plugin {spec}: its extend_cfg is a {type(hook).__name__}, not a function: "
                            "define it as def extend_cfg(cfg): ..., or rename that attribute")
        logger.info("Loaded plugin %s (%s)", spec, getattr(module, "__file__", module.__name__))
        loaded.append((spec, module))
    return loaded


def extend_cfg(plugins: Iterable[Tuple[str, ModuleType]], cfg) -> None:
    """Call each plugin's ``extend_cfg(cfg)`` (those that define one), in the order given."""
    for spec, module in plugins:
        hook = getattr(module, "extend_cfg", None)
        if hook is None:
            continue
        try:
            hook(cfg)
        except UserError:
            raise
        except (KeyboardInterrupt, SystemExit):
            raise
        except Exception as exc:
            raise UserError(f"--plugin {spec}: its extend_cfg(cfg) failed with {_describe(exc)}: "
                            "fix the plugin's extend_cfg") from exc


def other_backend_hint(name: str) -> str:
    """Why a trainer a plugin registered is unknown: it went into the other Dassl's registry.

    A plugin that imports ``dassl.engine`` directly registers into real
    Dassl's ``TRAINER_REGISTRY``; a run on the bundled engine never sees it.
    Returns an explanation to append to the error, or an empty string.
    """
    from gopro_prompts import dassl_compat

    real_engine = sys.modules.get("dassl.engine")
    if dassl_compat.BACKEND == "dassl" or real_engine is None:
        return ""
    registry = getattr(real_engine, "TRAINER_REGISTRY", None)
    if registry is None or name not in getattr(registry, "_obj_map", {}):
        return ""
    return (f" ({name} is registered in real Dassl's TRAINER_REGISTRY, but this run uses the bundled "
            "engine: run with DASSL_BACKEND=dassl, or import the Dassl names in the plugin from "
            "gopro_prompts.dassl_compat)")
