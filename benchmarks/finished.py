"""Benchmark jobs read back once finished, and ONNX files re-timed side by side."""

from __future__ import annotations

import json
import statistics
from pathlib import Path
from types import SimpleNamespace


def finished_job(job_dir: Path) -> SimpleNamespace:
    """A job finished earlier in ``job_dir``, read back: what the benchmarks use of an
    outcome (``out_dir``, ``results``, ``baseline``, ``budget_ms``; no wall time)."""
    from slimtune.resume import read_finished

    pareto = json.loads((job_dir / "pareto.json").read_text())
    return SimpleNamespace(out_dir=job_dir.resolve(), results=read_finished(job_dir),
                           baseline=pareto["baseline"], budget_ms=pareto["budget_ms"],
                           wall_seconds=None)


def onnx_input_shape(path: Path) -> tuple[int, ...]:
    """The shape of one example the ONNX file at ``path`` takes (its input, batch dropped)."""
    import onnx

    dims = onnx.load(str(path), load_external_data=False).graph.input[0].type.tensor_type
    return tuple(d.dim_value for d in dims.shape.dim[1:])


def remeasure(paths: dict[str, Path], rounds: int, threads: int, batch: int,
              input_shape: tuple[int, ...] = (1, 28, 28)) -> dict[str, list[float]]:
    """Each ONNX file's median latency (ms) in each of ``rounds`` rounds, the files taken
    in turn within a round (ONNX Runtime, one exclusive-lock measurement a file a round)."""
    from slimtune.measurement.latency import RUNTIMES, MeasureProtocol, measure_latency

    rt = RUNTIMES["onnxruntime"]()
    one = MeasureProtocol(warmup=5, rounds=1, repeats=30)
    runners = {k: rt.prepare(p, input_shape, batch, threads) for k, p in paths.items()}
    medians: dict[str, list[float]] = {k: [] for k in paths}
    for _ in range(rounds):
        for k, run_once in runners.items():
            with rt.context(threads):
                stats = measure_latency(run_once, runtime="onnxruntime", threads=threads,
                                        batch_size=batch, protocol=one)
            medians[k].append(stats.median_ms)
    return medians


def side_by_side(paths: dict[str, Path], rounds: int, threads: int, batch: int,
                 input_shape: tuple[int, ...], reference: str = "baseline") -> dict:
    """``paths`` re-timed interleaved round by round: each one's median ms over the rounds
    and its ratio to ``reference`` (the median of the per-round ratios)."""
    rounds_ms = remeasure(paths, rounds, threads, batch, input_shape)
    base = rounds_ms[reference]
    return {"rounds": rounds, "threads": threads, "batch": batch,
            "median_ms": {k: statistics.median(v) for k, v in rounds_ms.items()},
            "ratio": {k: statistics.median(m / b for m, b in zip(v, base, strict=True))
                      for k, v in rounds_ms.items()}}
