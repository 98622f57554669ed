"""Compression methods compared on the quickstart model: which front wins?

Four jobs on the quickstart setup (ResNet-20, Fashion-MNIST subset, ONNX Runtime batch 64,
2 threads), one baseline shared by all:

(a) ``channel_int8``: per-group prune ratios and per-layer 32/8 bits (the default space);
(b) ``lowrank``: per-layer rank fractions only (truncated SVD into two smaller layers);
(c) ``deep_compression``: magnitude sparsity + k-means weight sharing + Huffman at fixed
    accuracy-preserving settings (uniform over every layer), as ``slimtune apply`` runs a
    policy;
(d) ``combined``: prune ratios, bits and rank in one space (every dimension that moves
    latency; sparsity/clusters are size-only and slimtune refuses them beside rank).

The searches (a), (b), (d) use TPE under the same latency budget; (d) gets as many trials
as (a) and (b) together, since its space holds both (say so when quoting it). Each
method's accuracy-latency front is taken from its feasible trials (validation accuracy),
then every front model and the baseline are re-measured side by side, round-robin in one
process, so load drift hits all alike. The check: every point of a single method's front
is weakly dominated (accuracy >= and latency <=, latencies within 2% counting as equal:
the same model re-measured differs by about 1%) by some point of the combined front.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import os
import statistics
from pathlib import Path

from finished import finished_job, remeasure

from slimtune.errors import BudgetError
from slimtune.job import JobOutcome, run_job
from slimtune.policy import ALLOWED_BITS, Policy
from slimtune.results.pareto import pareto_front
from slimtune.spec import JobSpec, load_spec, parse_spec

RANKS = [0.125, 0.25, 0.375, 0.5, 0.75]
TIE = 0.02  # latencies within 2% are a tie: the same model re-measured differs by ~1%
DC_SETTINGS = [(0.5, 32), (0.7, 32)]  # (sparsity, clusters): deep_compression.json's best


def _spec(base: dict, name: str, out: Path, *, space: dict, search: dict,
          budget: dict) -> JobSpec:
    data = {**base, "name": name, "space": {"round_to": 8, **space}, "budget": budget,
            "search": {"warm_start": "uniform", "evaluator": "finetune", **search},
            "tracking": {"uri": f"sqlite:///{(out / 'mlruns.db').resolve()}",
                         "experiment": "methods"}}
    return parse_spec(data)


def _run(spec: JobSpec, out: Path, searcher=None) -> JobOutcome:
    with contextlib.redirect_stdout(io.StringIO()):
        return run_job(spec, out / spec.name, overwrite=True, searcher=searcher)


def run_policies(base: dict, out: Path, name: str, make_policies, *,
                 sections: dict | None = None) -> JobOutcome:
    """Evaluate fixed policies as trials of one job (as ``slimtune apply`` does), never
    gated by latency. ``make_policies(table)`` builds them for the model's layer table;
    ``sections`` replace spec sections (e.g. ``finetune``)."""
    from slimtune.baseline import build_model
    from slimtune.layers import build_layer_table
    from slimtune.search.fixed import FixedSearcher
    from slimtune.spaces import SearchSpace

    probe = parse_spec({**base, "name": name})
    model = build_model(probe.model, num_classes=10, in_channels=1, input_shape=(1, 28, 28))
    table = build_layer_table(model, (1, 28, 28), round_to=8)
    policies = make_policies(table)
    spec = _spec({**base, **(sections or {})}, name, out,
                 space={"prune_ratios": [0.0], "bits": sorted(set(ALLOWED_BITS))},
                 search={"searcher": "random", "trials": len(policies), "seed": 0,
                         "warm_start": "none"},
                 budget={"latency_ms": 1e6})
    space = SearchSpace.from_table(table, (0.0,), spec.space.bits, round_to=8)
    return _run(spec, out, FixedSearcher(space, policies, name=name))


def _deep_compression(base: dict, out: Path, settings: list[tuple[float, int]]) -> JobOutcome:
    """(c): fixed uniform sparsity/cluster policies, evaluated like any trial."""

    def policies(table):
        names = [layer.name for layer in table.layers]
        return [Policy(sparsity=dict.fromkeys(names, s), clusters=dict.fromkeys(names, k),
                       model_signature=table.signature()) for s, k in settings]

    return run_policies(base, out, "deep_compression", policies)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--trials", type=int, default=16, help="trials of (a) and (b) each")
    ap.add_argument("--fraction", type=float, default=0.6, help="budget: baseline latency x")
    ap.add_argument("--lowrank-fraction", type=float, default=None,
                    help="budget of (b) alone (default: --fraction); low-rank alone may not "
                         "reach --fraction at all")
    ap.add_argument("--reuse", nargs="*", default=[], metavar="METHOD",
                    help="read these methods' finished jobs from --out instead of running")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--rounds", type=int, default=7)
    ap.add_argument("--out", type=Path, default=Path("runs/bench/methods"))
    ap.add_argument("--results", type=Path,
                    default=Path("benchmarks/results/methods.json"))
    args = ap.parse_args()

    quick = load_spec("quickstart")
    base = quick.model_dump(by_alias=True, mode="json", exclude_none=True)
    args.out.mkdir(parents=True, exist_ok=True)
    budget = {"latency_fraction": args.fraction}
    tpe = {"searcher": "tpe", "seed": args.seed}
    specs = {
        "channel_int8": _spec(base, "channel_int8", args.out, space={"bits": [32, 8]},
                              search={**tpe, "trials": args.trials}, budget=budget),
        "lowrank": _spec(base, "lowrank", args.out,
                         space={"prune_ratios": [0.0], "bits": [32], "rank": RANKS},
                         search={**tpe, "trials": args.trials},
                         budget={"latency_fraction": args.lowrank_fraction or args.fraction}),
        "combined": _spec(base, "combined", args.out,
                          space={"bits": [32, 8], "rank": RANKS},
                          search={**tpe, "trials": 2 * args.trials}, budget=budget),
    }
    outcomes: dict[str, JobOutcome] = {}
    refused: dict[str, str] = {}  # preflight: no policy of the space can meet the budget
    for name in ("channel_int8", "lowrank", "deep_compression", "combined"):
        try:
            if name in args.reuse:
                outcomes[name] = finished_job(args.out / name)
            elif name == "deep_compression":
                outcomes[name] = _deep_compression(base, args.out, DC_SETTINGS)
            else:
                outcomes[name] = _run(specs[name], args.out)
        except BudgetError as err:
            refused[name] = str(err)
        print(f"{name}: {refused.get(name, 'done')}", flush=True)

    fronts = {name: pareto_front(o.results, ("accuracy", "latency_ms"))
              for name, o in outcomes.items()}
    any_outcome = outcomes["channel_int8"]
    paths = {"baseline": any_outcome.out_dir / "baseline" / "model.onnx"}
    for name, front in fronts.items():
        for r in front:
            paths[f"{name}/{r.trial_id}"] = outcomes[name].out_dir / "trials" / \
                str(r.trial_id) / "model.onnx"
    quick_target = quick.target
    latency = {k: statistics.median(v) for k, v in remeasure(
        paths, args.rounds, quick_target.threads, quick_target.batch_size).items()}
    base_ms = latency["baseline"]
    base_acc = any_outcome.baseline["accuracy"]
    rows = {name: [{"trial": r.trial_id, "val_accuracy": r.accuracy,
                    "test_accuracy": r.test_accuracy,
                    "latency_ms_in_search": r.latency_ms,
                    "latency_ms": latency[f"{name}/{r.trial_id}"],
                    "speedup": base_ms / latency[f"{name}/{r.trial_id}"],
                    "size_bytes": r.size_bytes, "macs": r.macs,
                    "policy": r.policy.to_dict()} for r in front]
            for name, front in fronts.items()}
    combined = rows.get("combined", [])
    dominance = {}
    for name in ("channel_int8", "lowrank", "deep_compression"):
        covered = [any(c["val_accuracy"] >= p["val_accuracy"]
                       and c["latency_ms"] <= p["latency_ms"] * (1 + TIE)
                       for c in combined) for p in rows.get(name, [])]
        dominance[name] = {"points": len(covered), "dominated": sum(covered)}
    searched = {n: {"trials": len(o.results), "feasible": sum(r.feasible for r in o.results),
                    "fastest_ms_in_search": min((r.latency_ms for r in o.results
                                                 if r.latency_ms), default=None),
                    "budget_ms": o.budget_ms, "wall_seconds": o.wall_seconds}
                for n, o in outcomes.items()}
    report = {
        "setup": {"model": "resnet20", "data": "quickstart fashion-mnist subset",
                  "budget_fraction": args.fraction,
                  "lowrank_budget_fraction": args.lowrank_fraction or args.fraction,
                  "latency_tie": TIE, "reused": args.reuse, "ranks": RANKS,
                  "deep_compression": DC_SETTINGS,
                  "remeasure_rounds": args.rounds,
                  "load_at_end": os.getloadavg()[0]},
        "baseline": {"val_accuracy": base_acc,
                     "test_accuracy": any_outcome.baseline.get("test_accuracy"),
                     "latency_ms": base_ms,
                     "size_bytes": any_outcome.baseline.get("size_bytes")},
        "searches": searched, "refused_by_preflight": refused,
        "fronts": rows, "combined_dominates": dominance,
    }
    args.results.parent.mkdir(parents=True, exist_ok=True)
    args.results.write_text(json.dumps(report, indent=2) + "\n")

    print(f"baseline: val {base_acc:.4f}, {base_ms:.3f} ms (re-measured)")
    print(f"{'method':<18}{'trial':>6}{'val acc':>9}{'test acc':>9}{'ms':>8}{'speedup':>8}"
          f"{'size KB':>9}")
    for name, front in rows.items():
        for p in front:
            print(f"{name:<18}{p['trial']:>6}{p['val_accuracy']:>9.4f}"
                  f"{p['test_accuracy'] or 0:>9.4f}{p['latency_ms']:>8.3f}"
                  f"{p['speedup']:>8.2f}{(p['size_bytes'] or 0) / 1024:>9.1f}")
    for name, why in refused.items():
        print(f"{name}: refused before any trial: {why}")
    for name, d in dominance.items():
        print(f"combined front dominates {d['dominated']}/{d['points']} points of {name}")


if __name__ == "__main__":
    main()
