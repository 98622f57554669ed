"""PPO agents on the quickstart setup: search quality, transfer to unseen models, step cost.

``compare``: PPO vs TPE vs random vs uniform at an equal number of real evaluations
(trials), per seed, at 50% of the baseline's measured latency; best feasible validation
accuracy and normalised hypervolume. PPO's proxy episodes are extra, cheap evaluations
(counted and timed separately).

``transfer``: an agent (trained on resnet20, e.g. the one ``compare``'s ppo run saved)
applied zero-shot to other models with their own 50% budgets, against the best uniform
policy within the agent's measured latency, TPE from scratch, and TPE warm-started from
the agent, at the same number of trials.

Every job runs through ``run_job`` exactly as ``slimtune run`` would; results go to
``benchmarks/results/agents_*.json``.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import time
from pathlib import Path
from typing import Any

from slimtune.errors import UserInputError
from slimtune.job import run_job
from slimtune.spec import load_spec

RESULTS = Path(__file__).parent / "results"


def _spec(name: str, arch: str, out: Path, fraction: float, **search: Any):
    base = load_spec("quickstart")
    out.mkdir(parents=True, exist_ok=True)
    return base.with_sections(
        name=name, model={"arch": arch}, budget={"latency_fraction": fraction},
        search={"warm_start": "none", **search},
        tracking={"uri": f"sqlite:///{(out / 'mlruns.db').resolve()}",
                  "experiment": "bench-agents"})


def _run(spec, out: Path, **kwargs: Any) -> dict[str, Any]:
    start = time.perf_counter()
    with contextlib.redirect_stdout(io.StringIO()):
        outcome = run_job(spec, out / spec.name, overwrite=True, **kwargs)
    best = outcome.best
    return {"job": spec.name, "searcher": spec.search.searcher, "seed": spec.search.seed,
            "arch": spec.model.arch, "trials": len(outcome.results),
            "feasible": sum(r.feasible for r in outcome.results),
            "best_val": best.accuracy if best else None,
            "best_test": best.test_accuracy if best else None,
            "best_latency_ms": best.latency_ms if best else None,
            "budget_ms": outcome.budget_ms, "baseline_ms": outcome.baseline["latency_ms"],
            "baseline_val": outcome.baseline["accuracy"], "hypervolume": outcome.hypervolume,
            "wall_seconds": time.perf_counter() - start,
            "results": [{"trial": r.trial_id, "state": r.state, "val": r.accuracy,
                         "latency_ms": r.latency_ms} for r in outcome.results]}


def _save(name: str, rows: list[dict[str, Any]]) -> None:
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / f"agents_{name}.json").write_text(json.dumps(rows, indent=2) + "\n")


def compare(args: argparse.Namespace) -> None:
    rows = []
    for seed in args.seeds:
        for searcher in args.searchers:
            spec = _spec(f"cmp-{searcher}-s{seed}", "resnet20", args.out, args.fraction,
                         searcher=searcher, trials=args.trials, seed=seed)
            spec = spec.with_sections(agent={"timesteps": args.timesteps})
            try:
                row = _run(spec, args.out)
            except UserInputError as err:  # e.g. a budget the loaded machine cannot meet
                row = {"job": spec.name, "searcher": searcher, "seed": seed, "error": str(err)}
            rows.append(row)
            print(json.dumps({k: v for k, v in row.items() if k != "results"}), flush=True)
            _save("compare", rows)


def transfer(args: argparse.Namespace) -> None:
    from slimtune.commands.apply import run as apply_run

    rows = []
    for arch in args.archs:
        out = args.out / f"apply-{arch}"
        spec = _spec(f"tr-{arch}-agent", arch, args.out, args.fraction, trials=1)
        job = args.out / f"{spec.name}.yaml"
        job.parent.mkdir(parents=True, exist_ok=True)
        job.write_text(spec.to_yaml())
        start = time.perf_counter()
        with contextlib.redirect_stdout(io.StringIO()):
            apply_run(argparse.Namespace(job=str(job), agent=args.agent, out=out, overwrite=True,
                                         address=None, verbose=False))
        zero = json.loads((out / "trials.jsonl").read_text().splitlines()[0])
        row = {"arch": arch, "agent_val": zero["accuracy"], "agent_test": zero["test_accuracy"],
               "agent_latency_ms": zero["latency_ms"], "agent_state": zero["state"],
               "agent_seconds": time.perf_counter() - start}
        runs = {
            "uniform": _spec(f"tr-{arch}-uniform", arch, args.out, args.fraction,
                             searcher="uniform", trials=args.trials),
            "tpe": _spec(f"tr-{arch}-tpe", arch, args.out, args.fraction, searcher="tpe",
                         trials=args.trials),
            "tpe_warm": _spec(f"tr-{arch}-tpe-warm", arch, args.out, args.fraction,
                              searcher="tpe", trials=args.trials,
                              warm_start_from=str(Path(args.agent).resolve())),
        }
        for name, s in runs.items():
            if args.only and name not in args.only:
                continue
            r = _run(s, args.out)
            row[name] = {k: v for k, v in r.items() if k != "results"}
            if name == "uniform":  # the best uniform policy no slower than the agent's
                within = [t for t in r["results"] if t["state"] == "ok"
                          and t["latency_ms"] <= zero["latency_ms"]]
                row["uniform_at_agent_latency_val"] = max((t["val"] for t in within),
                                                          default=None)
        rows.append(row)
        print(json.dumps(row), flush=True)
        _save(f"transfer_{args.tag}" if args.tag else "transfer", rows)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", type=Path, default=Path("runs/bench/agents"))
    ap.add_argument("--fraction", type=float, default=0.5)
    sub = ap.add_subparsers(dest="what", required=True)
    c = sub.add_parser("compare")
    c.add_argument("--searchers", nargs="+", default=["ppo", "tpe", "random", "uniform"])
    c.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    c.add_argument("--trials", type=int, default=8)
    c.add_argument("--timesteps", type=int, default=640)
    t = sub.add_parser("transfer")
    t.add_argument("--agent", required=True)
    t.add_argument("--archs", nargs="+", default=["resnet32", "mobilenetv2_small"])
    t.add_argument("--trials", type=int, default=8)
    t.add_argument("--tag", default="", help="suffix of the results file")
    t.add_argument("--only", nargs="*", choices=["uniform", "tpe", "tpe_warm"],
                   help="run only these comparison jobs (the agent always runs)")
    args = ap.parse_args()
    compare(args) if args.what == "compare" else transfer(args)


if __name__ == "__main__":
    main()
