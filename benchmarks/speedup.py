"""Is pruning structural and fast? Measured speed-up over MAC reduction of uniform pruning.

For ResNet-20 (1x28x28, untrained weights: latency does not depend on weight values),
prune every channel group uniformly at 0.25, 0.5 and 0.75, and measure fp32 latency on
ONNX Runtime and torch eager at batch 1 and 64 with 2 threads. The candidates are
interleaved round by round (each round measures every model once), so drifting machine
load hits all of them alike; the figure is the median over rounds of each model's round
median. Efficiency = (baseline latency / pruned latency) / (baseline MACs / pruned MACs):
1.0 means latency falls exactly as fast as MACs.
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
from pathlib import Path

import torch

from slimtune.compress import count_macs_params
from slimtune.export import export_onnx
from slimtune.layers import build_layer_table
from slimtune.measurement.latency import RUNTIMES, MeasureProtocol, measure_latency
from slimtune.methods.apply import prune_structure
from slimtune.models import build_builtin
from slimtune.spaces import SearchSpace

SHAPE = (1, 28, 28)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--arch", default="resnet20")
    ap.add_argument("--ratios", type=float, nargs="+", default=[0.25, 0.5, 0.75])
    ap.add_argument("--batches", type=int, nargs="+", default=[1, 64])
    ap.add_argument("--runtimes", nargs="+", default=["onnxruntime", "torch"])
    ap.add_argument("--rounds", type=int, default=7)
    ap.add_argument("--round-to", type=int, default=8)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--out", type=Path, default=Path("runs/bench/speedup.json"))
    args = ap.parse_args()

    torch.manual_seed(0)
    base = build_builtin(args.arch, 10, 1).eval()
    table = build_layer_table(base, SHAPE, round_to=args.round_to)
    space = SearchSpace.from_table(table, tuple([0.0, *args.ratios]), (32,),
                                   round_to=args.round_to)
    models = {0.0: base}
    for r in args.ratios:
        models[r] = prune_structure(base, table, space.uniform(r, 32), round_to=args.round_to)
    macs = {r: count_macs_params(m, SHAPE)[0] for r, m in models.items()}

    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        onnx_paths = {r: export_onnx(m, SHAPE, Path(tmp) / f"m{r}.onnx")
                      for r, m in models.items()}
        for runtime in args.runtimes:
            for batch in args.batches:
                repeats = 200 if batch == 1 else 20
                one_round = MeasureProtocol(warmup=10, rounds=1, repeats=repeats)
                runners = {}
                for r, m in models.items():
                    subject = onnx_paths[r] if runtime == "onnxruntime" else m
                    rt = RUNTIMES[runtime]()
                    runners[r] = (rt, rt.prepare(subject, SHAPE, batch, args.threads))
                medians: dict[float, list[float]] = {r: [] for r in models}
                for _ in range(args.rounds):
                    for r, (rt, run_once) in runners.items():
                        with rt.context(args.threads):
                            stats = measure_latency(run_once, runtime=runtime,
                                                    threads=args.threads, batch_size=batch,
                                                    protocol=one_round)
                        medians[r].append(stats.median_ms)
                lat = {r: statistics.median(v) for r, v in medians.items()}
                for r in args.ratios:
                    speedup = lat[0.0] / lat[r]
                    mac_red = macs[0.0] / macs[r]
                    rows.append({"runtime": runtime, "batch": batch, "ratio": r,
                                 "macs_m": macs[r] / 1e6, "latency_ms": lat[r],
                                 "baseline_ms": lat[0.0], "speedup": speedup,
                                 "mac_reduction": mac_red, "efficiency": speedup / mac_red,
                                 "round_medians_ms": medians[r]})
    print(f"{'runtime':<12}{'batch':>6}{'ratio':>7}{'MACs M':>9}{'base ms':>9}{'ms':>9}"
          f"{'speedup':>9}{'MAC red':>9}{'eff':>7}")
    for row in rows:
        print(f"{row['runtime']:<12}{row['batch']:>6}{row['ratio']:>7.2f}{row['macs_m']:>9.2f}"
              f"{row['baseline_ms']:>9.3f}{row['latency_ms']:>9.3f}{row['speedup']:>9.2f}"
              f"{row['mac_reduction']:>9.2f}{row['efficiency']:>7.2f}")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(rows, indent=2))


if __name__ == "__main__":
    main()
