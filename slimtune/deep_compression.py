"""Deep Compression (Han et al. 2016): magnitude sparsity, shared weights, Huffman coding.

Per layer, a policy's ``sparsity`` zeroes that fraction of the weights with the smallest
magnitude, and its ``clusters`` replaces the remaining weights by the nearest of k shared
values (1-D k-means, linear initialisation over [min, max] as in the paper). The result
is stored in a container whose size is the size objective of such a policy: it serves
storage and download size, not latency — a sparse, shared-weight model runs as a dense
float model on ONNX Runtime and on torch, exactly as fast as before.

The container that stores such a model is :mod:`slimtune.compressed_file`.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import numpy as np
import torch
from torch import nn

from slimtune.compress import check_names
from slimtune.errors import PolicyError
from slimtune.layers import LayerTable

__all__ = ["check_layers", "compress_weights", "finetune_compressed", "keep_shared",
           "keep_sparsity", "sparsity_masks", "with_uniform"]





# --- compressing the weights -------------------------------------------------------------

def check_layers(table: LayerTable, policy) -> None:
    """PolicyError unless ``policy`` fits ``table`` where a container reads it: its
    signature, groups and bits (:func:`slimtune.compress.check_names`) and the layers of
    its ``sparsity`` and ``clusters``."""
    check_names(table, policy)
    layers = {li.name for li in table.layers}
    for what in ("sparsity", "clusters"):
        unknown = sorted(set(getattr(policy, what)) - layers)
        if unknown:
            raise PolicyError(f"policy sets {what} of unknown layers: {', '.join(unknown)}")


def _weights(model: nn.Module, table: LayerTable, names: set[str]) -> dict[str, torch.Tensor]:
    modules = dict(model.named_modules())
    out = {}
    for name in sorted(names):
        m = modules.get(name)
        if not isinstance(m, (nn.Conv2d, nn.Linear)):
            raise PolicyError(f"model has no conv/linear layer {name!r}")
        out[name] = m.weight
    return out


def sparsity_masks(model: nn.Module, table: LayerTable, policy) -> dict[str, torch.Tensor]:
    """Per layer with a sparsity: True where a weight survives magnitude pruning.

    Exactly ``round(sparsity * numel)`` weights go per layer (ties at equal magnitude
    broken by position), so the count does not depend on the weights' values.
    """
    masks = {}
    for name, weight in _weights(model, table, set(policy.sparsity)).items():
        n_zero = round(policy.sparsity[name] * weight.numel())
        flat = weight.detach().abs().flatten()
        order = torch.argsort(flat, stable=True)
        mask = torch.ones_like(flat, dtype=torch.bool)
        mask[order[:n_zero]] = False
        masks[name] = mask.reshape(weight.shape)
    return masks


def _kmeans_1d(values: np.ndarray, k: int, iters: int = 30) -> tuple[np.ndarray, np.ndarray]:
    """Codebook (float32, ascending) and each value's index: 1-D Lloyd, linear init.

    With k or fewer distinct values the codebook is those values, so sharing an already
    shared tensor again changes nothing.
    """
    distinct = np.unique(values)
    if len(distinct) <= k:
        codebook = distinct.astype(np.float32)
        return codebook, np.searchsorted(codebook, values).astype(np.int64)
    v = values.astype(np.float64)
    centroids = np.linspace(v.min(), v.max(), k)
    for _ in range(iters):
        idx = np.searchsorted((centroids[1:] + centroids[:-1]) / 2, v)
        sums = np.bincount(idx, weights=v, minlength=k)
        counts = np.bincount(idx, minlength=k)
        updated = np.where(counts > 0, sums / np.maximum(counts, 1), centroids)
        if np.allclose(updated, centroids, rtol=0, atol=1e-12):
            break
        centroids = np.sort(updated)
    codebook = centroids.astype(np.float32)
    idx = np.searchsorted((codebook[1:].astype(np.float64) + codebook[:-1]) / 2, v)
    return codebook, idx.astype(np.int64)


def compress_weights(model: nn.Module, table: LayerTable, policy) -> nn.Module:
    """In place: zero each layer's smallest weights (``policy.sparsity``), then share the
    remaining ones among ``policy.clusters`` values. Returns ``model``.

    Idempotent: applying it to its own result changes no bit, which is what lets
    ``write_compressed`` store a model that is already compressed bit-exactly.
    """
    masks = sparsity_masks(model, table, policy)
    with torch.no_grad():
        for name, weight in _weights(model, table, set(masks)).items():
            weight.copy_(torch.where(masks[name], weight, torch.zeros_like(weight)))
        for name, weight in _weights(model, table, set(policy.clusters)).items():
            flat = weight.detach().cpu().flatten().numpy()
            nz = np.flatnonzero(flat)
            if len(nz) == 0:
                continue
            codebook, idx = _kmeans_1d(flat[nz], policy.clusters[name])
            shared = np.zeros_like(flat)
            shared[nz] = codebook[idx]
            weight.copy_(torch.from_numpy(shared).reshape(weight.shape))
    return model


@contextlib.contextmanager
def keep_sparsity(model: nn.Module, table: LayerTable, policy) -> Iterator[None]:
    """While fine-tuning inside the block, pruned weights get zero gradients (so SGD with
    momentum and weight decay leaves them at exactly zero); they are re-zeroed on exit."""
    masks = sparsity_masks(model, table, policy)
    weights = _weights(model, table, set(masks))
    handles = [w.register_hook(lambda g, m=masks[n]: g * m) for n, w in weights.items()]
    try:
        yield
    finally:
        for h in handles:
            h.remove()
        with torch.no_grad():
            for n, w in weights.items():
                w.copy_(torch.where(masks[n], w, torch.zeros_like(w)))


@contextlib.contextmanager
def keep_shared(model: nn.Module, table: LayerTable, policy) -> Iterator[None]:
    """Fine-tune shared weights (Han et al.'s trained quantization): inside the block every
    weight of a cluster gets the cluster's mean gradient and pruned weights none, so SGD
    (momentum, weight decay: elementwise) keeps each cluster one value and zeros zero.
    Call it on a model ``compress_weights`` has shared."""
    handles = []
    for w in _weights(model, table, set(policy.clusters)).values():
        values, idx = torch.unique(w.detach(), return_inverse=True)
        idx = idx.flatten()
        counts = torch.bincount(idx, minlength=len(values)).to(w.dtype)
        live = (w.detach() != 0).to(w.dtype)

        def hook(g: torch.Tensor, idx=idx, counts=counts, live=live) -> torch.Tensor:
            sums = torch.zeros_like(counts).index_add_(0, idx, g.flatten())
            return (sums / counts)[idx].reshape(g.shape) * live

        handles.append(w.register_hook(hook))
    try:
        yield
    finally:
        for h in handles:
            h.remove()


def with_uniform(policy, table: LayerTable, *, sparsity: float | None,
                 clusters: int | None):
    """``policy`` with ``sparsity``/``clusters`` set on every conv/linear layer it leaves
    unset (the ``slimtune export --sparsity/--clusters`` overrides); ValueError if out of
    range. Layers the policy factorises (``rank``) are left dense: their factors are not
    sparsified or shared."""
    from dataclasses import replace

    names = [li.name for li in table.layers if li.name not in policy.rank]
    return replace(
        policy,
        sparsity={**({n: sparsity for n in names} if sparsity else {}), **policy.sparsity},
        clusters={**({n: clusters for n in names} if clusters else {}), **policy.clusters})


# --- in a trial ------------------------------------------------------------------------------

@contextlib.contextmanager
def finetune_compressed(model: nn.Module, table: LayerTable, policy) -> Iterator[None]:
    """Around a trial's fine-tune: zero the policy's sparsity first, hold the zeros while
    the block trains, share the weights (``clusters``) at the end. A no-op for a policy
    without Deep Compression."""
    if not (policy.sparsity or policy.clusters):
        yield
        return
    from dataclasses import replace

    masked = replace(policy, clusters={})
    compress_weights(model, table, masked)
    with keep_sparsity(model, table, masked):
        yield
    compress_weights(model, table, policy)
