"""Searchers compared at an equal number of real evaluations.

Runs the quickstart setup (ResNet-20, Fashion-MNIST subset, ONNX Runtime batch 64,
2 threads) with a budget of 50% of the baseline's measured latency, once per searcher
and seed, and reports the best feasible validation accuracy (and its test accuracy),
the normalised hypervolume, the feasible-trial count, and the orchestration overhead
(search wall time vs the sum of the trials' own time). All seeds share one cached
baseline and one data split (``baseline.seed``).
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import statistics
from pathlib import Path

from slimtune.job import run_job
from slimtune.spec import load_spec, parse_spec


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--searchers", nargs="+", default=["tpe", "nsga2", "random", "uniform"])
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    ap.add_argument("--trials", type=int, default=16)
    ap.add_argument("--fraction", type=float, default=0.5)
    ap.add_argument("--warm-start", default="uniform", choices=["none", "uniform"])
    ap.add_argument("--out", type=Path, default=Path("runs/bench/search"))
    args = ap.parse_args()

    base = load_spec("quickstart")
    data = base.model_dump(by_alias=True, mode="json", exclude_none=True)
    data["budget"] = {"latency_fraction": args.fraction}
    data["tracking"] = {"uri": f"sqlite:///{(args.out / 'mlruns.db').resolve()}",
                        "experiment": "search-quality"}
    args.out.mkdir(parents=True, exist_ok=True)
    rows = []
    for seed in args.seeds:
        for name in args.searchers:
            data["search"] = {"searcher": name, "trials": args.trials, "seed": seed,
                              "warm_start": args.warm_start}
            data["name"] = f"bench-{name}-s{seed}"
            spec = parse_spec(data)
            with contextlib.redirect_stdout(io.StringIO()):
                outcome = run_job(spec, args.out / data["name"], overwrite=True)
            best = outcome.best
            row = {"searcher": name, "seed": seed, "trials": len(outcome.results),
                   "feasible": sum(r.feasible for r in outcome.results),
                   "best_val": best.accuracy if best else None,
                   "best_test": best.test_accuracy if best else None,
                   "best_latency_ms": best.latency_ms if best else None,
                   "budget_ms": outcome.budget_ms, "hypervolume": outcome.hypervolume,
                   "baseline_val": outcome.baseline["accuracy"],
                   "search_seconds": outcome.search_seconds,
                   "trial_seconds": outcome.trial_seconds}
            rows.append(row)
            print(json.dumps(row), flush=True)
            (args.out / "results.json").write_text(json.dumps(rows, indent=2))

    print(f"\n{'searcher':<9}{'best val (mean ± sd)':>24}{'best test':>11}{'HV':>8}"
          f"{'feasible':>10}{'overhead':>10}")
    for name in args.searchers:
        mine = [r for r in rows if r["searcher"] == name]
        vals = [r["best_val"] or 0.0 for r in mine]
        tests = [r["best_test"] or 0.0 for r in mine]
        sd = statistics.stdev(vals) if len(vals) > 1 else 0.0
        overhead = statistics.mean(r["search_seconds"] / r["trial_seconds"] - 1 for r in mine)
        print(f"{name:<9}{statistics.mean(vals):>16.4f} ± {sd:.4f}"
              f"{statistics.mean(tests):>11.4f}"
              f"{statistics.mean(r['hypervolume'] for r in mine):>8.4f}"
              f"{statistics.mean(r['feasible'] for r in mine):>10.1f}{overhead:>9.1%}")


if __name__ == "__main__":
    main()
