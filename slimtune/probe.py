"""Preflight's group probe: every channel group the space offers, pruned for real once.

The groups the space offers are pruned at their largest ratios on a copy of the model,
run forward, and compared with the *masked reference*: the unpruned model with the same
channels zeroed where torch-pruning's dependency graph says they are produced and
consumed (a LayerNorm normalises over the kept channels only, as the pruned one does).
Then they are exported to ONNX and run in the target's runtime (``slimtune.runtimes``),
compared with the masked reference again. Both checks run on all groups together first
and, when one fails, on halves until each failing group is found pruned alone (so a
model whose groups all work costs one pruned copy and one export). A group that fails
any step leaves the space with one line saying why, so a search, a carried policy or an
agent never picks it. Channel groups torch-pruning cannot trace at all
(:func:`slimtune.layers.untraced_groups`) get one line each too; their layers' bit-widths
are still searched.

Results are kept per architecture in the process (weights do not change which groups
prune), like :func:`slimtune.depth.droppable_blocks`.
"""

from __future__ import annotations

import tempfile
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import torch
import torch_pruning as tp
from torch import nn

from slimtune.compress import grouped_conv_order, removed_channels
from slimtune.errors import UserInputError
from slimtune.export import export_onnx
from slimtune.imports import one_line
from slimtune.layers import (
    LayerTable,
    UntracedGroup,
    dependency_graph,
    eval_mode,
    example_input,
    untraced_groups,
)
from slimtune.methods.apply import prune_structure
from slimtune.policy import Policy
from slimtune.runtimes import Runtime

if TYPE_CHECKING:
    from slimtune.spaces import SearchSpace
    from slimtune.spec import JobSpec

#: outputs may differ from the masked reference by this fraction of its largest magnitude
TOLERANCE = 1e-3
#: examples in the probe's batch
BATCH = 2

_LAST_DIM = (nn.Linear, nn.LayerNorm, nn.MultiheadAttention, nn.Embedding)


@dataclass(frozen=True)
class GroupFailure:
    """A channel group that did not survive the probe, and where it broke."""

    group: str
    ratio: float
    step: str  # "prune" | "masked reference" | "export" | the runtime's name
    detail: str

    def describe(self) -> str:
        return (f"channel group {self.group!r} left out of the space: pruned at "
                f"{self.ratio:g}, {self.step} failed ({self.detail})")


@dataclass(frozen=True)
class ProbeReport:
    """What the probe found: groups probed, those that failed, those never traced."""

    probed: tuple[str, ...]
    failed: tuple[GroupFailure, ...]
    untraced: tuple[UntracedGroup, ...]
    runtime: str
    seconds: float
    cached: bool = False  # the answer of an earlier probe of this architecture (this process)

    @property
    def removed(self) -> dict[str, str]:
        """Group name -> why it leaves the space."""
        return {f.group: f.describe() for f in self.failed}

    def lines(self) -> list[str]:
        """One line per group left out (none when every group works)."""
        lines = [f"channel pruning leaves out layers {u.describe()}; their bit-widths are "
                 "still searched" for u in self.untraced]
        return lines + [f.describe() for f in self.failed]

    def summary(self) -> str:
        ok = len(self.probed) - len(self.failed)
        return (f"probe: {ok} of {len(self.probed)} channel groups pruned at their largest "
                f"ratio, exported and run on {self.runtime} match the masked reference "
                f"({'as probed earlier' if self.cached else f'{self.seconds:.1f} s'})")


def probe_groups(model: nn.Module, table: LayerTable, ratios: Mapping[str, Sequence[float]],
                 runtime: Runtime, *, round_to: int = 1, threads: int = 1) -> ProbeReport:
    """Probe each group of ``ratios`` (a space's ``ratios``) at its largest ratio > 0."""
    largest = {g: max(rs) for g, rs in ratios.items() if max(rs) > 0}
    key = (table.signature(), tuple((n, type(m).__name__) for n, m in model.named_modules()),
           tuple(sorted(largest.items())), round_to, runtime.name)
    if key in _PROBED:
        return replace(_PROBED[key], cached=True)
    _PROBED[key] = _probe(model, table, largest, runtime, round_to, threads)
    return _PROBED[key]


#: probe reports per architecture, largest ratios, rounding and runtime, once a process
_PROBED: dict[tuple, ProbeReport] = {}


def _probe(model: nn.Module, table: LayerTable, largest: Mapping[str, float],
           runtime: Runtime, round_to: int, threads: int) -> ProbeReport:
    start = time.perf_counter()
    checks = _Checks(model, table, largest, runtime, round_to, threads)
    failed = dict(checks.unplanned)
    for check in (checks.in_torch, checks.deployed):  # the cheap check first
        passing = [g for g in largest if g not in failed]
        for group, (step, detail) in _bisect(passing, check).items():
            failed[group] = GroupFailure(group, largest[group], step, detail)
    untraced = tuple(untraced_groups(model, table.input_shape))
    return ProbeReport(probed=tuple(largest),
                       failed=tuple(failed[g] for g in largest if g in failed),
                       untraced=untraced, runtime=runtime.name,
                       seconds=time.perf_counter() - start)


def _bisect(groups: list[str], check: Callable[[list[str]], tuple[str, str] | None],
            ) -> dict[str, tuple[str, str]]:
    """The groups whose check fails: all together first, halves only on failure, so a
    group that fails is found pruned alone."""
    if not groups:
        return {}
    failure = check(groups)
    if failure is None:
        return {}
    if len(groups) == 1:
        return {groups[0]: failure}
    half = len(groups) // 2
    return {**_bisect(groups[:half], check), **_bisect(groups[half:], check)}


class _Checks:
    """The probe's two checks of a set of groups pruned together at their largest ratios:
    in torch against the masked reference, then exported and run on the runtime. Each
    returns None, or the step that failed and why."""

    def __init__(self, model: nn.Module, table: LayerTable, largest: Mapping[str, float],
                 runtime: Runtime, round_to: int, threads: int) -> None:
        self.model, self.table, self.largest = model, table, largest
        self.runtime, self.round_to, self.threads = runtime, round_to, threads
        x = torch.randn(BATCH, *table.input_shape, generator=torch.Generator().manual_seed(0))
        self.x = x.to(example_input(model, table.input_shape).device)
        self.order = grouped_conv_order(model, table) if largest else None
        self.reference = _MaskedReference(model, table, self.x)
        self.removed: dict[str, list[int]] = {}
        self.unplanned: dict[str, GroupFailure] = {}  # no channels to remove could be chosen
        for group, ratio in largest.items():
            try:
                self.removed[group] = removed_channels(
                    model, table, Policy(prune={group: ratio}), round_to=round_to,
                    keep_order=self.order, graph=self.reference.dg)[group]
            except Exception as err:  # any error of torch-pruning or the model: reported
                self.unplanned[group] = GroupFailure(group, ratio, "prune", _detail(err))
        self._pruned: dict[tuple[str, ...], nn.Module] = {}

    def _prune(self, groups: list[str]) -> nn.Module:
        key = tuple(groups)
        if key not in self._pruned:
            policy = Policy(prune={g: self.largest[g] for g in groups})
            self._pruned = {key: prune_structure(self.model, self.table, policy,
                                                 round_to=self.round_to,
                                                 keep_order=self.order).eval()}
        return self._pruned[key]

    def in_torch(self, groups: list[str]) -> tuple[str, str] | None:
        try:
            with torch.no_grad():
                out = self._prune(groups)(self.x)
        except Exception as err:
            return "prune", _detail(err)
        gap = _gap(out, self.reference.outputs({g: self.removed[g] for g in groups}))
        return None if gap is None else ("masked reference", gap)

    def deployed(self, groups: list[str]) -> tuple[str, str] | None:
        try:
            pruned = self._prune(groups)
        except Exception as err:
            return "prune", _detail(err)
        runtime, shape = self.runtime, self.table.input_shape
        with tempfile.TemporaryDirectory(prefix="slimtune-probe-") as tmp:
            try:
                path = export_onnx(pruned, shape, Path(tmp) / "probe.onnx")
            except Exception as err:
                return "export", _detail(err)
            subject: Path | nn.Module = path if runtime.takes_onnx else pruned
            batch = self.x.detach().cpu().numpy().astype(np.float32)
            try:
                out = runtime.outputs(subject, batch, self.threads)
                if out is None:  # a runtime that only times: it must at least run it
                    runtime.prepare(subject, shape, len(batch), self.threads)()
                    return None
            except Exception as err:
                return runtime.name, _detail(err)
        gap = _gap(torch.from_numpy(np.asarray(out)),
                   self.reference.outputs({g: self.removed[g] for g in groups}))
        return None if gap is None else (runtime.name, gap)


def _gap(out: object, ref: torch.Tensor) -> str | None:
    """None when ``out`` matches ``ref`` within TOLERANCE, else what differs."""
    if not isinstance(out, torch.Tensor):
        return f"its output is {type(out).__name__}, the reference's a tensor"
    out = out.detach().cpu().float()
    if out.shape != ref.shape:
        return f"output shape {list(out.shape)}, the masked reference's {list(ref.shape)}"
    scale = float(ref.abs().max()) or 1.0
    diff = float((out - ref).abs().max())
    if diff <= TOLERANCE * scale:
        return None
    return f"outputs differ from the masked reference by {diff:.3g} (largest {scale:.3g})"


def _detail(err: BaseException) -> str:
    return f"{type(err).__name__}: {one_line(err)[:200]}"


class _MaskedReference:
    """The unpruned model's outputs with some groups' channels zeroed (see the module
    docstring); masks come from torch-pruning's graph of the unpruned model."""

    def __init__(self, model: nn.Module, table: LayerTable, x: torch.Tensor) -> None:
        self.model, self.x = model, x
        self.modules = dict(model.named_modules())
        self.names = {m: n for n, m in self.modules.items()}
        with eval_mode(model):
            self.dg = dependency_graph(model, example_input(model, table.input_shape))

    def outputs(self, removed: Mapping[str, Sequence[int]]) -> torch.Tensor:
        """The model's output on the probe batch with ``removed`` (group -> root channel
        indices) zeroed wherever the channels go."""
        sites: dict[tuple[nn.Module, bool], set[int]] = {}
        for name, idxs in removed.items():
            root = self.modules[name]
            fn = tp.prune_conv_out_channels if isinstance(root, nn.Conv2d) \
                else tp.prune_linear_out_channels
            for item in self.dg.get_pruning_group(root, fn, list(idxs)).items:
                module = item.dep.target.module
                if isinstance(module, nn.Module) and module in self.names:
                    out = self.dg.is_out_channel_pruning_fn(item.dep.handler)
                    sites.setdefault((module, out), set()).update(int(i) for i in item.idxs)
        handles = []
        for (module, out), idxs in sites.items():
            index = torch.as_tensor(sorted(idxs), dtype=torch.long)
            dim = -1 if isinstance(module, _LAST_DIM) else 1
            if not out:
                handles.append(module.register_forward_pre_hook(_ZeroInputs(index, dim)))
            elif isinstance(module, nn.LayerNorm) and len(module.normalized_shape) == 1:
                handles.append(module.register_forward_hook(_KeptLayerNorm(index)))
            else:
                handles.append(module.register_forward_hook(_ZeroOutput(index, dim)))
        try:
            with eval_mode(self.model), torch.no_grad():
                out = self.model(self.x)
        finally:
            for h in handles:
                h.remove()
        return out.detach().cpu().float()


def _zeroed(t: torch.Tensor, index: torch.Tensor, dim: int) -> torch.Tensor:
    if t.dim() < 2 or int(index.max()) >= t.shape[dim]:
        return t
    return t.index_fill(dim, index.to(t.device), 0.0)


class _ZeroInputs:
    """Forward pre-hook: the removed channels of a consumer's tensor inputs zeroed."""

    def __init__(self, index: torch.Tensor, dim: int) -> None:
        self.index, self.dim = index, dim

    def __call__(self, _m: nn.Module, inputs: tuple) -> tuple:
        return tuple(_zeroed(a, self.index, self.dim) if isinstance(a, torch.Tensor) else a
                     for a in inputs)


class _ZeroOutput(_ZeroInputs):
    """Forward hook: the removed channels of a module's output (or first output) zeroed."""

    def __call__(self, _m: nn.Module, _inputs: tuple, output: object) -> object:
        if isinstance(output, tuple) and output and isinstance(output[0], torch.Tensor):
            return (_zeroed(output[0], self.index, self.dim), *output[1:])
        return _zeroed(output, self.index, self.dim) if isinstance(output, torch.Tensor) \
            else output


class _KeptLayerNorm:
    """Forward hook: a LayerNorm over the kept channels only, the removed ones zero."""

    def __init__(self, index: torch.Tensor) -> None:
        self.index = index

    def __call__(self, norm: nn.LayerNorm, inputs: tuple, output: torch.Tensor) -> torch.Tensor:
        width = output.shape[-1]
        keep = torch.ones(width, dtype=torch.bool)
        keep[self.index] = False
        keep = keep.nonzero().flatten().to(output.device)
        weight = norm.weight[keep] if norm.weight is not None else None
        bias = norm.bias[keep] if norm.bias is not None else None
        kept = nn.functional.layer_norm(inputs[0].index_select(-1, keep), (len(keep),),
                                        weight, bias, norm.eps)
        return output.new_zeros(output.shape).index_copy(-1, keep, kept)


def probed_space(spec: JobSpec, model: nn.Module, table: LayerTable,
                 say: Callable[[str], None]) -> tuple[SearchSpace, ProbeReport]:
    """The job's space (``SearchSpace.for_spec``, ``space.exclude`` applied) without the
    groups the probe (:func:`job_probe`) saw fail, and the probe's report; each group left
    out is one line to ``say``. UserInputError (one line) when nothing is left to search."""
    from slimtune.spaces import SearchSpace

    space = SearchSpace.for_spec(spec.space, table, model)
    report = job_probe(spec, model, space)
    for line in report.lines():
        say(line)
    space = space.without(groups=report.removed)
    if all(len(d.choices) < 2 for d in space.distributions().values()):
        raise UserInputError(f"model {spec.model.describe()}: nothing left to search (no "
                             "channel group can be pruned and every layer has one bit-width): "
                             "list more space.bits, or exclude less")
    return space, report


def job_probe(spec: JobSpec, model: nn.Module, space: SearchSpace) -> ProbeReport:
    """:func:`probe_groups` of ``space`` as a job runs it: on the target's runtime (for a
    remote target, the local runtime reading the same kind of model), its threads."""
    from slimtune.runtimes import get_runtime

    runtime = spec.target.backend
    if not spec.target.is_local:
        runtime = get_runtime("onnxruntime" if runtime.takes_onnx else "torch")
    return probe_groups(model, space.table, space.ratios, runtime,
                        round_to=spec.space.round_to, threads=spec.target.threads)
