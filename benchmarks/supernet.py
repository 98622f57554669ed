"""Supernet evaluator on resnet20: step and score cost, and how it ranks policies.

Trains a baseline (``--baseline-steps``), builds the ``SupernetEvaluator`` (sandwich
training, ``--steps``), draws ``--policies`` random prune policies from the space and
scores each three ways on the same validation subset:

- ``supernet``: the evaluator's score (masks, BN recalibration, no weight update);
- ``bn_recal``: the baseline pruned plainly (L2 magnitude) and BN-recalibrated (EagleEye);
- ``finetuned`` (``--finetune-steps`` > 0): the plainly pruned baseline fine-tuned with
  distillation from the baseline, then recalibrated: the accuracy a winner ends up near.

Reports seconds per sandwich step and per ``score`` call and the Spearman correlations
between the three; writes ``benchmarks/results/supernet_<dataset>.json``. The committed
results (one thread, shared 2-core machine, ~5 min each)::

    python benchmarks/supernet.py --finetune-steps 100
    python benchmarks/supernet.py --dataset fashion-mnist --train-size 3000 --val-size 500 \
        --baseline-steps 200 --steps 60 --finetune-steps 30 --recal-batches 5
"""

from __future__ import annotations

import argparse
import copy
import json
import random
import statistics
import time
from pathlib import Path
from typing import Any

import torch

from slimtune.data import load_dataset
from slimtune.envs.proxy import recalibrate_bn
from slimtune.evaluators.supernet import SandwichRecipe, SupernetEvaluator, random_policy
from slimtune.layers import build_layer_table
from slimtune.methods.apply import prune_structure
from slimtune.models import build_builtin
from slimtune.spaces import SearchSpace
from slimtune.train import accuracy, predict, train

RESULTS = Path(__file__).parent / "results"


def spearman(a: list[float], b: list[float]) -> float:
    """Spearman's rho with average ranks for ties."""
    def ranks(v: list[float]) -> list[float]:
        order = sorted(range(len(v)), key=v.__getitem__)
        r = [0.0] * len(v)
        i = 0
        while i < len(v):
            j = i
            while j + 1 < len(v) and v[order[j + 1]] == v[order[i]]:
                j += 1
            for k in range(i, j + 1):
                r[order[k]] = (i + j) / 2
            i = j + 1
        return r
    ra, rb = ranks(a), ranks(b)
    ma, mb = statistics.fmean(ra), statistics.fmean(rb)
    cov = sum((x - ma) * (y - mb) for x, y in zip(ra, rb, strict=True))
    var = (sum((x - ma) ** 2 for x in ra) * sum((y - mb) ** 2 for y in rb)) ** 0.5
    return cov / var if var else float("nan")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--dataset", default="digits", choices=["digits", "fashion-mnist"])
    ap.add_argument("--train-size", type=int, default=None)
    ap.add_argument("--val-size", type=int, default=None)
    ap.add_argument("--baseline-steps", type=int, default=400)
    ap.add_argument("--steps", type=int, default=200)
    ap.add_argument("--n-random", type=int, default=2)
    ap.add_argument("--batch-size", type=int, default=64)
    ap.add_argument("--lr", type=float, default=0.05)
    ap.add_argument("--policies", type=int, default=20)
    ap.add_argument("--recal-batches", type=int, default=10)
    ap.add_argument("--finetune-steps", type=int, default=0)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)

    data = load_dataset(args.dataset, train_size=args.train_size, val_size=args.val_size,
                        test_size=None,
                        seed=args.seed)
    baseline = build_builtin("resnet20", data.num_classes, data.input_shape[0])
    start = time.perf_counter()
    train(baseline, data.train, steps=args.baseline_steps, batch_size=args.batch_size,
          lr=args.lr, seed=args.seed)
    baseline_s = time.perf_counter() - start
    val = data.val
    baseline_acc = accuracy(predict(baseline, val), val.y)
    table = build_layer_table(baseline, data.input_shape)
    space = SearchSpace.from_table(table, (0.0, 0.25, 0.5, 0.75), (32,))

    stamps: list[float] = []
    recipe = SandwichRecipe(steps=args.steps, batch_size=args.batch_size, lr=args.lr / 5,
                            n_random=args.n_random, seed=args.seed)
    start = time.perf_counter()
    evaluator = SupernetEvaluator.build(
        baseline, table, space, data.train, val, recipe=recipe, val_size=len(val),
        recal_batches=args.recal_batches, cache=False,
        on_step=lambda _s, _p: stamps.append(time.perf_counter()))
    build_s = time.perf_counter() - start
    step_s = [b - a for a, b in zip(stamps, stamps[1:], strict=False)]

    rng = random.Random(args.seed)
    policies = [random_policy(space, rng) for _ in range(args.policies)]
    rows: list[dict[str, Any]] = []
    for policy in policies:
        t0 = time.perf_counter()
        sup = evaluator.score(policy)
        score_s = time.perf_counter() - t0
        pruned = prune_structure(baseline, table, policy)
        recalibrate_bn(pruned, data.train, batches=args.recal_batches,
                       batch_size=args.batch_size)
        row = {"prune": dict(policy.prune), "supernet": sup, "score_s": score_s,
               "bn_recal": accuracy(predict(pruned, val), val.y),
               "params": sum(p.numel() for p in pruned.parameters())}
        if args.finetune_steps > 0:
            tuned = prune_structure(baseline, table, policy)
            train(tuned, data.train, steps=args.finetune_steps, batch_size=args.batch_size,
                  lr=args.lr / 5, seed=args.seed, teacher=copy.deepcopy(baseline))
            recalibrate_bn(tuned, data.train, batches=args.recal_batches,
                           batch_size=args.batch_size)
            row["finetuned"] = accuracy(predict(tuned, val), val.y)
        rows.append(row)
        print(json.dumps({k: v for k, v in row.items() if k != "prune"}), flush=True)

    def col(name: str) -> list[float]:
        return [r[name] for r in rows]

    summary: dict[str, Any] = {
        "dataset": args.dataset, "train": len(data.train), "val": len(val),
        "threads": args.threads, "baseline_steps": args.baseline_steps,
        "baseline_seconds": round(baseline_s, 1), "baseline_val_acc": baseline_acc,
        "recipe": recipe.to_dict(), "build_seconds": round(build_s, 1),
        "sandwich_step_s_median": statistics.median(step_s) if step_s else None,
        "score_s_median": statistics.median(col("score_s")),
        "spearman_supernet_vs_bn_recal": spearman(col("supernet"), col("bn_recal")),
    }
    if args.finetune_steps > 0:
        summary["finetune_steps"] = args.finetune_steps
        summary["spearman_supernet_vs_finetuned"] = spearman(col("supernet"), col("finetuned"))
        summary["spearman_bn_recal_vs_finetuned"] = spearman(col("bn_recal"), col("finetuned"))
    print(json.dumps(summary, indent=2))
    RESULTS.mkdir(exist_ok=True)
    out = RESULTS / f"supernet_{args.dataset}.json"
    out.write_text(json.dumps({"summary": summary, "policies": rows}, indent=2) + "\n")


if __name__ == "__main__":
    main()
