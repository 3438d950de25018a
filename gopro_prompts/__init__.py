"""gopro_prompts: GOPro and its baselines as Dassl trainers (the import package of this repository).

The sub-packages live where researchers look for them, at the top of the
repository: ``trainers/``, ``datasets/``, ``tools/``, ``bundled_dassl/`` and the
data folders ``configs/`` and ``assets/``.  They are imported only as
``gopro_prompts.trainers``, ``gopro_prompts.datasets``, ...:

* installed (``pip install .``), the wheel maps each folder into this package
  (``pyproject.toml``, ``[tool.setuptools.package-dir]``);
* in a clone (no install, or ``pip install -e .``), this package's search path
  also covers the repository root, so the same names resolve to the same files.

Either way every source file is executed as one module only, so nothing is
registered twice, and nothing claims a generic top-level name such as
``trainers``, ``datasets`` or ``clip``.
"""
from __future__ import annotations

import os

__version__ = "0.7.0"

_HERE = os.path.dirname(os.path.abspath(__file__))
_ROOT = os.path.dirname(_HERE)

#: True when running from a source tree (the top-level folders sit beside this package)
FROM_SOURCE = (
    not os.path.isdir(os.path.join(_HERE, "trainers"))
    and os.path.isfile(os.path.join(_ROOT, "trainers", "__init__.py"))
    and os.path.isfile(os.path.join(_ROOT, "pyproject.toml"))
)
if FROM_SOURCE:
    __path__.append(_ROOT)  # noqa: F821  (the package's own __path__)


def resource_path(*parts: str) -> str:
    """Absolute path of a data file shipped with the package, e.g. ``resource_path("configs", "trainers")``.

    In a source tree that is the repository's folder, in an installed package
    the copy inside it (package data).  The path is returned even when it does
    not exist, so callers can name it in their error message.
    """
    base = _ROOT if FROM_SOURCE else _HERE
    return os.path.join(base, *parts)
