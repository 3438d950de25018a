"""Accuracy metric (as Dassl's ``dassl/metrics/accuracy.py`` ``compute_accuracy``)."""
from __future__ import annotations

import torch

__all__ = ["compute_accuracy"]


def compute_accuracy(output, target: torch.Tensor, topk=(1,)) -> list:
    """Top-k accuracies in percent, one tensor of shape ``[1]`` per k.

    ``output`` is a ``[B, C]`` logit tensor; for a tuple/list its first element
    is used.  ``target`` holds the ``B`` integer labels.
    """
    if isinstance(output, (tuple, list)):
        output = output[0]
    if output.dim() != 2:
        raise ValueError(
            f"compute_accuracy expects logits of shape [batch, classes], got {tuple(output.shape)}"
        )
    batch_size = target.size(0)
    maxk = max(topk)
    top = output.topk(maxk, dim=1, largest=True, sorted=True).indices  # [B, maxk]
    hits = top.eq(target.view(-1, 1))  # [B, maxk]
    results = []
    for k in topk:
        n_correct = hits[:, :k].any(dim=1).float().sum().reshape(1)
        results.append(n_correct * (100.0 / batch_size))
    return results
