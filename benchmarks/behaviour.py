"""Behaviour metrics on the quickstart setup: uniform vs searched policy, and what a
worst-class constraint costs.

Two TPE jobs on the quickstart setup (ResNet-20, Fashion-MNIST 12000/2000/5000, ONNX
Runtime batch 64 on 2 threads, budget 60% of the baseline's measured latency, warm
start with the two uniform anchors), every metric group on, the same seed:

1. without a constraint: the *uniform policy* is the better feasible of the two uniform
   anchors (trials 0 and 1: all layers int8 unpruned; half the channels fp32), the
   *searched policy* the best feasible of the other trials; every metric side by side
   with the baseline.
2. with ``constraints: {worst_class_drop_pp: 1.0}`` and job 1's budget in milliseconds
   (so both searches face the same bound, not two noisy baseline measurements): the best
   feasible trial against job 1's, i.e. what the constraint costs in accuracy and
   latency. Also reported: the same constraint applied after the fact to job 1's trials
   (same candidates, no search adaptation).

Writes ``--json`` (default ``benchmarks/results/behaviour.json``) and prints Markdown
tables. Fewer trials than the quickstart's 16 (``--trials``, default 10) to stay
within ~15 minutes on 2 quiet cores.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import time
from pathlib import Path

from slimtune.job import run_job
from slimtune.spec import load_spec, parse_spec

KEYS = ("accuracy", "test_accuracy", "latency_ms", "size_bytes", "worst_class_accuracy",
        "worst_class_drop_pp", "agreement", "exemplar_accuracy", "ece", "nll",
        "robust_clean_accuracy", "fgsm_accuracy", "pgd_accuracy", "noise_accuracy",
        "mia_advantage", "generalization_gap", "saliency_rank_corr", "evaluate_seconds",
        "seconds")


def _row(result) -> dict:
    d = result.to_dict()
    return {"trial_id": result.trial_id, "state": result.state,
            "violations": list(result.violations),
            "policy": {"mean_prune": round(sum(result.policy.prune.values())
                                           / max(len(result.policy.prune), 1), 3),
                       "int8_layers": sum(b == 8 for b in result.policy.bits.values())},
            **{k: d.get(k) for k in KEYS}}


def _job(data: dict, out: Path, name: str, constraints: dict, budget: dict | None = None
         ) -> dict:
    data = {**data, "name": name, "constraints": constraints,
            "budget": budget or data["budget"]}
    spec = parse_spec(data)
    start = time.perf_counter()
    with contextlib.redirect_stdout(io.StringIO()):
        outcome = run_job(spec, out / name, overwrite=True)
    wall = time.perf_counter() - start
    best = outcome.best
    return {"name": name, "constraints": constraints, "wall_seconds": wall,
            "budget_ms": outcome.budget_ms, "hypervolume": outcome.hypervolume,
            "trials": len(outcome.results),
            "evaluated": sum(r.accuracy is not None for r in outcome.results),
            "feasible": sum(r.feasible for r in outcome.results),
            "violating": sum(bool(r.violations) for r in outcome.results),
            "baseline": {**{k: outcome.baseline.get(k) for k in KEYS},
                         **{k: outcome.baseline.get("metrics", {}).get(k) for k in KEYS
                            if k in outcome.baseline.get("metrics", {})}},
            "best": _row(best) if best else None,
            "all": [_row(r) for r in sorted(outcome.results, key=lambda r: r.trial_id)]}


def _fmt(v) -> str:
    if v is None:
        return "–"
    return f"{v:,.0f}" if isinstance(v, int) or abs(v) >= 1000 else f"{v:.4g}"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--trials", type=int, default=10)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", type=Path, default=Path("runs/bench/behaviour"))
    ap.add_argument("--json", type=Path, default=Path("benchmarks/results/behaviour.json"))
    args = ap.parse_args()

    base = load_spec("quickstart")
    data = base.model_dump(by_alias=True, mode="json", exclude_none=True)
    data["search"] = {"searcher": "tpe", "trials": args.trials, "seed": args.seed,
                      "warm_start": "uniform"}
    data["evaluate"] = ["per_class", "agreement", "calibration", "privacy", "robustness",
                        "saliency"]
    data["tracking"] = {"uri": f"sqlite:///{(args.out / 'mlruns.db').resolve()}",
                        "experiment": "behaviour"}
    args.out.mkdir(parents=True, exist_ok=True)
    free = _job(data, args.out, "behaviour-free", {})
    print(json.dumps({k: free[k] for k in ("name", "wall_seconds", "feasible")}), flush=True)
    bound = _job(data, args.out, "behaviour-worst1", {"worst_class_drop_pp": 1.0},
                 {"latency_ms": free["budget_ms"]})
    print(json.dumps({k: bound[k] for k in ("name", "wall_seconds", "feasible")}), flush=True)

    feasible = [r for r in free["all"] if r["state"] == "ok"]
    anchors = [r for r in feasible if r["trial_id"] < 2]
    searched = [r for r in feasible if r["trial_id"] >= 2]
    uniform = max(anchors, key=lambda r: r["accuracy"]) if anchors else None
    best_searched = max(searched, key=lambda r: r["accuracy"]) if searched else None
    kept = [r for r in feasible if r["worst_class_drop_pp"] <= 1.0]
    post_hoc = max(kept, key=lambda r: r["accuracy"]) if kept else None
    result = {"setup": {"spec": "quickstart", "trials": args.trials, "seed": args.seed,
                        "evaluate": data["evaluate"]},
              "uniform": uniform, "searched": best_searched,
              "post_hoc_constrained_best": post_hoc, "jobs": [free, bound]}
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps(result, indent=2) + "\n")

    cols = [("baseline", free["baseline"]), ("uniform", uniform), ("searched", best_searched)]
    print("\n| metric | " + " | ".join(
        f"{n}{'' if r is None or n == 'baseline' else ' (#' + str(r['trial_id']) + ')'}"
        for n, r in cols) + " |")
    print("|---|" + "---|" * len(cols))
    for k in KEYS:
        print(f"| {k} | " + " | ".join(_fmt((r or {}).get(k)) for _, r in cols) + " |")
    print("\n| job | feasible / evaluated / trials | violating | best trial | val acc | "
          "test acc | latency ms | worst_class_drop_pp | hypervolume | wall s |")
    print("|---|---|---|---|---|---|---|---|---|---|")
    for job in (free, bound):
        b = job["best"] or {}
        print(f"| {job['name']} | {job['feasible']} / {job['evaluated']} / {job['trials']} | "
              f"{job['violating']} | {b.get('trial_id', '–')} | {_fmt(b.get('accuracy'))} | "
              f"{_fmt(b.get('test_accuracy'))} | {_fmt(b.get('latency_ms'))} | "
              f"{_fmt(b.get('worst_class_drop_pp'))} | {job['hypervolume']:.4f} | "
              f"{job['wall_seconds']:.0f} |")
    print(f"\npost hoc, job 1's trials with worst_class_drop_pp <= 1.0: {len(kept)} of "
          f"{len(feasible)} feasible; best: {post_hoc and post_hoc['trial_id']} "
          f"(val acc {_fmt(post_hoc and post_hoc['accuracy'])})")


if __name__ == "__main__":
    main()
