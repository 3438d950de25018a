"""Random-number-generator states as plain data, so that a resumed run repeats an uninterrupted one.

Python's ``random``, NumPy's global generator, torch's CPU generator and every
CUDA device's generator: what Dassl-style training draws from (data shuffling
and augmentation, initialisation, dropout).  The captured state is plain data
(``torch.load(weights_only=True)`` reads it back).
"""
from __future__ import annotations

import random

import numpy as np
import torch

from gopro_prompts.dassl_compat import get_logger

logger = get_logger("trainer")


def capture_rng_state() -> dict:
    """Python, NumPy, torch and CUDA generator states as plain data (weights_only-loadable)."""
    name, key, pos, has_gauss, gauss = np.random.get_state()
    return {
        "python": random.getstate(),
        "numpy": [name, torch.from_numpy(key.astype(np.int64)), int(pos), int(has_gauss), float(gauss)],
        "torch": torch.get_rng_state(),
        "cuda": list(torch.cuda.get_rng_state_all()) if torch.cuda.is_available() else [],
    }


def restore_rng_state(state: dict) -> None:
    """Inverse of :func:`capture_rng_state` (CUDA states only when the GPU count matches)."""
    version, internal, gauss_next = state["python"]
    random.setstate((version, tuple(internal), gauss_next))
    name, key, pos, has_gauss, gauss = state["numpy"]
    np.random.set_state((name, key.numpy().astype(np.uint32), pos, has_gauss, gauss))
    torch.set_rng_state(state["torch"].cpu())
    cuda = state.get("cuda") or []
    if torch.cuda.is_available() and cuda:
        if len(cuda) == torch.cuda.device_count():
            torch.cuda.set_rng_state_all([s.cpu() for s in cuda])
        else:
            logger.warning("The checkpoint holds %d CUDA generator states but %d GPUs are visible: "
                           "CUDA generators are not restored", len(cuda), torch.cuda.device_count())
