"""Latency-aware vs MAC-aware selection: measured latency at equal capacity (and accuracy).

What is compared, precisely. ``--policies`` random policies of the quickstart space
(ResNet-20, per-group prune ratios and per-layer 32/8 bits, round_to 8) are pruned,
deployed as a trial deploys them (ONNX, int8 QDQ for 8-bit layers) and measured on this
machine (batch 64, 2 threads, all policies round-robin). For a MAC budget at the 25th,
50th and 75th percentile of their MAC counts:

* MAC-aware search: among policies within the MAC budget, the one with the most MACs
  (the most capacity, the usual accuracy proxy of MAC-constrained search); it cannot
  tell policies of equal MACs apart, so bits do not enter its choice.
* Latency-aware search, same accuracy proxy: among policies with at least as many MACs
  as the MAC-aware pick, the one with the lowest measured latency.

The figure is the MAC-aware pick's latency over the latency-aware pick's (target: >= 1.10).
With ``--finetune``, both picks of every budget are also run as real trials (fine-tune
with distillation from the trained baseline, int8 deploy, measure, validation accuracy),
so "equal accuracy" is checked instead of assumed.
"""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

import numpy as np
from common import conditions, quickstart, write_result

from slimtune.compress import count_macs_params
from slimtune.measurement.predictor import measure_policies, random_policies
from slimtune.methods.apply import prune_structure
from slimtune.spaces import SearchSpace


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--policies", type=int, default=24)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--finetune", action="store_true")
    ap.add_argument("--out", type=Path)
    args = ap.parse_args()
    start = conditions()
    spec, checked = quickstart()
    model, table, data = checked.model, checked.table, checked.data
    space = SearchSpace.from_table(table, spec.space.prune_ratios, spec.space.bits,
                                   round_to=spec.space.round_to)
    policies = random_policies(space, args.policies, seed=args.seed)
    macs = [count_macs_params(prune_structure(model, table, p, round_to=spec.space.round_to),
                              data.input_shape)[0] for p in policies]
    stats = measure_policies(spec, model, table, policies)
    lat = [s.median_ms for s in stats]
    rows = []
    for q in (25, 50, 75):
        budget = float(np.percentile(macs, q))
        within = [i for i in range(len(policies)) if macs[i] <= budget]
        mac_pick = max(within, key=lambda i: (macs[i], -i))
        peers = [i for i in range(len(policies)) if macs[i] >= macs[mac_pick]]
        lat_pick = min(peers, key=lambda i: lat[i])
        row = {"mac_budget_percentile": q, "mac_budget_m": budget / 1e6,
               "mac_aware": {"index": mac_pick, "macs_m": macs[mac_pick] / 1e6,
                             "latency_ms": lat[mac_pick],
                             "int8_layers": sum(b <= 8 for b in policies[mac_pick].bits.values())},
               "latency_aware": {"index": lat_pick, "macs_m": macs[lat_pick] / 1e6,
                                 "latency_ms": lat[lat_pick],
                                 "int8_layers": sum(b <= 8
                                                    for b in policies[lat_pick].bits.values())},
               "speedup": lat[mac_pick] / lat[lat_pick],
               # load only adds time: the fastest rounds compare the models' own costs
               "speedup_fastest_round": min(stats[mac_pick].round_medians_ms)
               / min(stats[lat_pick].round_medians_ms)}
        rows.append(row)
        print(f"MAC budget p{q} ({budget / 1e6:.2f}M): MAC-aware #{mac_pick} "
              f"{macs[mac_pick] / 1e6:.2f}M MACs {lat[mac_pick]:.3f} ms; latency-aware "
              f"#{lat_pick} {macs[lat_pick] / 1e6:.2f}M MACs {lat[lat_pick]:.3f} ms: "
              f"{row['speedup']:.2f}x", flush=True)
    if args.finetune:
        _finetune(spec, checked, rows, policies)
    write_result("vs_macs", {
        "policies": [p.to_dict() for p in policies], "macs": macs, "latency_ms": lat,
        "round_medians_ms": [list(s.round_medians_ms) for s in stats], "rows": rows,
        "median_speedup": float(np.median([r["speedup"] for r in rows])),
        "target_met": all(r["speedup"] >= 1.10 for r in rows),
        "conditions_start": start}, args.out)


def _finetune(spec, checked, rows, policies) -> None:
    from slimtune.baseline import prepare_baseline
    from slimtune.trial import TrialContext, run_trial

    baseline = prepare_baseline(spec, checked.data)
    with tempfile.TemporaryDirectory() as tmp:
        ctx = TrialContext(spec=spec, table=checked.table,
                           baseline_state=baseline.model.state_dict(), data=checked.data,
                           budget_ms=float("inf"), trials_dir=Path(tmp))
        for row in rows:
            for side in ("mac_aware", "latency_aware"):
                i = row[side]["index"]
                result = run_trial(ctx, i, policies[i], side)
                row[side].update(val_accuracy=result.accuracy, trial_latency_ms=result.latency_ms,
                                 state=result.state, error=result.error)
                print(f"  p{row['mac_budget_percentile']} {side}: val acc {result.accuracy}, "
                      f"deployed {result.latency_ms} ms", flush=True)


if __name__ == "__main__":
    main()
