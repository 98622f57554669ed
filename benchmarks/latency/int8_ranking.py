"""Does the latency predictor rank whole-model int8 (and fp32) policies as the target does?

The search's screen decides from predictions which candidates are deployed and timed at
all; a predictor that ranks int8 graphs the wrong way round keeps the search out of the
int8 + pruned region. On the quickstart ResNet-20 (untrained weights: latency does not
depend on them) with one bit-width for the whole model (``bits_per: model``), this
measures a fixed set of policies (uniform ratios, one stage pruned, two stages pruned,
each fp32 and int8) interleaved round by round, predicts them with the predictor the job
would build (its table and calibration cached in $SLIMTUNE_CACHE), and reports Spearman's
rank correlation and the error per precision::

    python benchmarks/latency/int8_ranking.py --out benchmarks/results/latency_int8_ranking.json
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
from common import conditions, quickstart, write_result
from scipy.stats import spearmanr

from slimtune.measurement.latency import MeasureProtocol
from slimtune.measurement.predictor import _probed, build_predictor, measure_policies
from slimtune.policy import Policy


def _policies(space) -> dict[str, Policy]:
    groups = list(space.ratios)
    stage = {s: [g for g in groups if g.startswith(s)] for s in ("layer1", "layer2", "layer3")}
    stage["layer1"].insert(0, "conv1")
    int8 = {layer: 8 for layer in space.bits}

    def near(g: str, r: float) -> float:  # the group's allowed ratio closest to r
        return min(space.ratios[g], key=lambda x: abs(x - r))

    shapes = {"none": {}}
    for r in (0.25, 0.375, 0.5, 0.625):
        shapes[f"uniform {r}"] = {g: near(g, r) for g in groups}
    for s, gs in stage.items():
        for r in (0.25, 0.5):
            shapes[f"{s} {r}"] = {g: near(g, r) for g in gs}
    for r in (0.25, 0.5):
        shapes[f"layer2+3 {r}"] = {g: near(g, r) for g in stage["layer2"] + stage["layer3"]}
    out = {}
    for name, prune in shapes.items():
        prune = {g: r for g, r in prune.items() if r > 0}
        out[f"fp32 {name}"] = Policy(prune=prune)
        out[f"int8 {name}"] = Policy(prune=prune, bits=int8)
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rounds", type=int, default=7)
    ap.add_argument("--out", type=Path)
    args = ap.parse_args()
    start = conditions()
    spec, checked = quickstart()
    spec = spec.model_copy(update={"space": spec.space.model_copy(update={"bits_per": "model"})})
    model, table = checked.model, checked.table
    predictor = build_predictor(spec, model, table, progress=print)
    print(predictor.describe(), flush=True)
    policies = _policies(_probed(spec, model, table))
    proto = MeasureProtocol(warmup=10, rounds=args.rounds, repeats=20, min_seconds_per_round=0.1)
    stats = measure_policies(spec, model, table, list(policies.values()), protocol=proto)
    base = {k: s.median_ms for k, s in zip(policies, stats, strict=True)}
    pred = {k: predictor.predict_ms(p) for k, p in policies.items()}
    rows = [{"policy": k, "measured_x": base[k] / base["fp32 none"],
             "predicted_x": pred[k] / pred["fp32 none"], "measured_ms": base[k],
             "predicted_ms": pred[k]} for k in policies]
    summary = {}
    for prec in ("fp32", "int8", "all"):
        sel = [r for r in rows if prec == "all" or r["policy"].startswith(prec)]
        rho = spearmanr([r["measured_ms"] for r in sel], [r["predicted_ms"] for r in sel])[0]
        err = [abs(r["predicted_ms"] / r["measured_ms"] - 1) * 100 for r in sel]
        summary[prec] = {"spearman": float(rho), "median_abs_pct": float(np.median(err)),
                         "max_abs_pct": float(np.max(err))}
    for r in rows:
        print(f"{r['policy']:22s} measured {r['measured_x']:.2f}x  "
              f"predicted {r['predicted_x']:.2f}x")
    for k, v in summary.items():
        print(f"{k}: Spearman {v['spearman']:.2f}, median |error| {v['median_abs_pct']:.1f}%, "
              f"max {v['max_abs_pct']:.1f}%")
    about = {k: v for k, v in predictor.to_dict().items() if k != "lut_path"}  # a local path
    write_result("int8_ranking", {"conditions_start": start, "predictor": about,
                                  "rows": rows, "summary": summary}, args.out)


if __name__ == "__main__":
    main()
