"""Parity adapter for CoOp (the ``coop.pt`` fixture)."""
from __future__ import annotations

from parity_adapters.common import standard_keys


def run(fixture, model, cfg, variants):
    return standard_keys(fixture, model)
