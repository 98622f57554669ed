"""Batch-norm recalibration: re-estimate running statistics of a compressed network.

A pruned network's BN statistics were computed for the channels it no longer has
upstream; EagleEye's adaptive BN (a few training batches in train mode, no gradient)
restores them and makes the accuracy of an un-fine-tuned candidate a faithful score.
"""

from __future__ import annotations

import torch
from torch import nn

from slimtune.split import IndexBatches, Split


def batch_norms(model: nn.Module) -> list[nn.modules.batchnorm._BatchNorm]:
    return [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]


def recalibration_batches(n: int, batches: int, batch_size: int) -> IndexBatches:
    """Windows of ``batch_size`` consecutive examples from the start, wrapping before the
    end (the last window may be short when ``n`` is small)."""
    def windows():
        for i in range(batches):
            start = (i * batch_size) % max(n - batch_size, 1)
            yield list(range(start, min(start + batch_size, n)))

    return IndexBatches(windows, batches)


@torch.no_grad()
def recalibrate_bn(model: nn.Module, split: Split, *, batches: int, batch_size: int) -> None:
    """Re-estimate every BatchNorm's running statistics on training batches, in place.

    The batches are the split's first ``batches * batch_size`` examples (wrapping), so
    two networks recalibrated alike see the same data. Leaves the model in eval mode.
    """
    norms = batch_norms(model)
    if not norms or batches <= 0:
        model.eval()
        return
    saved = [m.momentum for m in norms]
    for m in norms:
        m.reset_running_stats()
        m.momentum = None  # a cumulative average over the batches below
    model.train()
    for x, _ in split.batched(recalibration_batches(len(split), batches, batch_size)):
        model(x)
    for m, momentum in zip(norms, saved, strict=True):
        m.momentum = momentum
    model.eval()
