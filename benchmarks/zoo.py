"""The architecture zoo before and after a 50% policy: MACs and measured latency.

For every model of ``slimtune.models.zoo`` (1x28x28, untrained weights: latency does not
depend on weight values), prune every channel group the layer table offers by 0.5
(attention groups in whole heads) and measure fp32 ONNX Runtime latency with 2 threads.
Before and after are interleaved round by round, so drifting machine load hits both;
the figure is the median over rounds of each model's round median, with the min-max of
the round medians as the spread.
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
from slimtune.methods.apply import apply_policy
from slimtune.models.zoo import ZOO
from slimtune.policy import Policy

SHAPE = (1, 28, 28)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--models", nargs="+", default=sorted(ZOO))
    ap.add_argument("--ratio", type=float, default=0.5)
    ap.add_argument("--batches", type=int, nargs="+", default=[1, 64])
    ap.add_argument("--rounds", type=int, default=7)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--out", type=Path, default=Path("benchmarks/results/zoo.json"))
    args = ap.parse_args()

    rows = []
    runtime = "onnxruntime"
    with tempfile.TemporaryDirectory() as tmp:
        for name in args.models:
            torch.manual_seed(0)
            base = ZOO[name]().eval()
            table = build_layer_table(base, SHAPE)
            policy = Policy(prune={g.name: args.ratio for g in table.groups})
            pruned = apply_policy(base, table, policy)
            cost = {"before": count_macs_params(base, SHAPE),
                    "after": count_macs_params(pruned, SHAPE)}
            paths = {"before": export_onnx(base, SHAPE, Path(tmp) / f"{name}.onnx"),
                     "after": export_onnx(pruned, SHAPE, Path(tmp) / f"{name}.pruned.onnx")}
            for batch in args.batches:
                one_round = MeasureProtocol(warmup=10, rounds=1,
                                            repeats=300 if batch == 1 else 30)
                rt = RUNTIMES[runtime]()
                runners = {k: rt.prepare(p, SHAPE, batch, args.threads) for k, p in paths.items()}
                medians: dict[str, list[float]] = {k: [] for k in paths}
                for _ in range(args.rounds):
                    for k, run_once in runners.items():
                        with rt.context(args.threads):
                            stats = measure_latency(run_once, runtime=runtime,
                                                    threads=args.threads, batch_size=batch,
                                                    protocol=one_round)
                        medians[k].append(stats.median_ms)
                lat = {k: statistics.median(v) for k, v in medians.items()}
                rows.append({
                    "model": name, "batch": batch, "groups": len(table.groups),
                    "macs_before_m": cost["before"][0] / 1e6,
                    "macs_after_m": cost["after"][0] / 1e6,
                    "params_before_k": cost["before"][1] / 1e3,
                    "params_after_k": cost["after"][1] / 1e3,
                    "latency_before_ms": lat["before"], "latency_after_ms": lat["after"],
                    "speedup": lat["before"] / lat["after"],
                    "mac_reduction": cost["before"][0] / cost["after"][0],
                    "round_medians_ms": medians})
    print(f"{'model':<17}{'batch':>6}{'MACs M':>15}{'params k':>15}{'latency ms':>17}"
          f"{'speedup':>9}{'MAC red':>9}")
    for r in rows:
        print(f"{r['model']:<17}{r['batch']:>6}"
              f"{r['macs_before_m']:>7.2f}->{r['macs_after_m']:<6.2f}"
              f"{r['params_before_k']:>7.1f}->{r['params_after_k']:<6.1f}"
              f"{r['latency_before_ms']:>8.3f}->{r['latency_after_ms']:<7.3f}"
              f"{r['speedup']:>9.2f}{r['mac_reduction']:>9.2f}")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(rows, indent=2) + "\n")


if __name__ == "__main__":
    main()
