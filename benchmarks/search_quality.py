"""The scoring search against what a user would do by hand, and its evaluator's fidelity.

``compare``: quickstart-style jobs (ResNet-20 or another built-in, Fashion-MNIST subset,
ONNX Runtime batch 64, 2 threads) at each budget fraction, searcher, evaluator and seed.
Every job finalizes its own references in the same run, by the same fine-tune recipe,
timed by the same paired protocol: (a) int8 only, (b) uniform pruning at the mildest
ratio meeting the budget (fp32 or int8, whichever is faster), besides (e) the search's
own best. ``--evaluators finetune`` adds (d), today's per-trial fine-tune search.
``--fastnas`` adds NVIDIA ModelOpt FastNAS on the job's own baseline at the FLOPs whose
model meets the same budget, finalized and timed alike (``benchmarks/fastnas.py``; needs
nvidia-modelopt, not a slimtune dependency). Each row ends with ``side_by_side``: the
baseline and every model the row hands out re-timed in one run, round by round.
``fastnas --jobs DIR...``: the FastNAS column (and ``side_by_side``) again for compare
jobs that finished earlier, their own rows read back.

``fidelity``: Spearman rank correlation between each evaluator's score and the
validation accuracy after the final fine-tune recipe, over random policies the latency
screen predicts feasible.

    python benchmarks/search_quality.py compare --fractions 0.5 0.3 --seeds 0
    python benchmarks/search_quality.py compare --fractions 0.5 --fastnas
    python benchmarks/search_quality.py fastnas --jobs runs/bench/search/JOB --out DIR
    python benchmarks/search_quality.py fidelity --policies 20 \
        --evaluators supernet bn_recal finetune
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import sys
import time
from pathlib import Path

from fastnas import fastnas_row, missing
from finished import finished_job, onnx_input_shape, side_by_side
from scipy.stats import spearmanr

from slimtune.job import run_job
from slimtune.spec import JobSpec, load_spec, parse_spec


def _job(args, *, name: str, fraction: float, searcher: str, evaluator: str,
         seed: int) -> dict:
    data = load_spec("quickstart").model_dump(by_alias=True, mode="json", exclude_none=True)
    data["name"] = name
    data["model"] = {"arch": args.arch}
    data["budget"] = {"latency_fraction": fraction}
    data["search"].update(searcher=searcher, evaluator=evaluator, seed=seed,
                          candidates=args.candidates, trials=args.trials)
    # the benchmark's own recipe, not the quickstart's (kept short for its 10 minutes)
    data["finalize"] = {**data.get("finalize", {}), "epochs": args.finalize_epochs,
                        "top_k": args.top_k, "max_epochs": args.finalize_max_epochs}
    if args.train_size:  # the well-trained baseline: the whole training split, longer
        data["data"].update(train_size=args.train_size, test_size=args.test_size)
    if args.baseline_epochs:
        data["baseline"] = {**data.get("baseline", {}), "epochs": args.baseline_epochs}
    if args.score_val_size:
        data["scoring"] = {**data.get("scoring", {}), "val_size": args.score_val_size}
    if args.skip_blocks:
        data["space"]["skip_blocks"] = True
    if args.bits:
        data["space"]["bits"] = args.bits
    if args.bits_per:
        data["space"]["bits_per"] = args.bits_per
    if evaluator == "finetune":
        data["search"].update(trials=args.finetune_trials, warm_start="uniform")
    data["tracking"] = {"uri": f"sqlite:///{(args.out / 'mlruns.db').resolve()}",
                        "experiment": "search-quality"}
    return data


def compare(args) -> None:
    rows = []
    for fraction in args.fractions:
        for seed in args.seeds:
            for evaluator in args.evaluators:
                for searcher in args.searchers:
                    depth = ("-depth" if args.skip_blocks else "") + (
                        "-b" + "_".join(map(str, args.bits)) if args.bits else "") + (
                        f"-bits_per_{args.bits_per}" if args.bits_per else "")
                    name = f"{args.arch}{depth}-{evaluator}-{searcher}-f{fraction}-s{seed}"
                    spec = parse_spec(_job(args, name=name, fraction=fraction,
                                           searcher=searcher, evaluator=evaluator, seed=seed))
                    start = time.perf_counter()
                    with contextlib.redirect_stdout(io.StringIO()):
                        outcome = run_job(spec, args.out / name, overwrite=True)
                    wall = time.perf_counter() - start
                    row = _summarise(outcome, name=name, fraction=fraction, seed=seed,
                                     searcher=searcher, evaluator=evaluator, wall=wall)
                    if args.fastnas:
                        row["fastnas"] = fastnas_row(spec, outcome, probes=args.fastnas_probes,
                                                     say=_say)
                    _finish_row(row, spec, outcome, args)
                    rows.append(row)
                    (args.out / "compare.json").write_text(json.dumps(rows, indent=2))
    _print_table(rows, args)


def fastnas_again(args) -> None:
    """The FastNAS column (and the side-by-side timing) again, for compare jobs finished
    earlier (``--jobs``): the job's rows read back, nothing of the job run again."""
    rows = []
    for job_dir in args.jobs:
        spec = load_spec(job_dir / "job.yaml")
        outcome = finished_job(job_dir)
        row = _summarise(outcome, name=spec.name, fraction=spec.budget.latency_fraction,
                         seed=spec.search.seed, searcher=spec.search.searcher,
                         evaluator=spec.search.evaluator, wall=None)
        row["fastnas"] = fastnas_row(spec, outcome, probes=args.fastnas_probes, say=_say)
        _finish_row(row, spec, outcome, args)
        rows.append(row)
        (args.out / "compare.json").write_text(json.dumps(rows, indent=2))
    _print_table(rows, args)


def _finish_row(row: dict, spec: JobSpec, outcome, args) -> None:
    """``side_by_side``: every model the row hands out (the search's, the references',
    FastNAS's) and the baseline re-timed in one interleaved run (``--side-by-side-rounds``
    rounds; ONNX targets only); then the row is printed."""
    if args.side_by_side_rounds and spec.target.backend.takes_onnx:
        job = Path(outcome.out_dir)
        paths = {"baseline": job / "baseline" / "model.onnx"}
        for name in ("search", "int8", "uniform"):
            if row.get(name):
                paths[name] = job / "trials" / str(row[name]["trial"]) / "model.onnx"
        if (row.get("fastnas") or {}).get("trial") is not None:
            paths["fastnas"] = job / "fastnas" / "final" / "model.onnx"
        row["side_by_side"] = side_by_side(paths, args.side_by_side_rounds,
                                           spec.target.threads, spec.target.batch_size,
                                           onnx_input_shape(paths["baseline"]))
    print(json.dumps(row), flush=True)


def _print_table(rows: list[dict], args) -> None:
    extra = f"{'fastnas val/test':>19}" if args.fastnas else ""
    print(f"\n{'job':<44}{'search val/test':>17}{'int8 val/test':>16}"
          f"{'uniform val/test':>19}{extra}{'wall s':>8}")

    def pair(v: dict | None) -> str:
        return f"{v['val']:.4f}/{v['test']:.4f}" if v and v.get("val") is not None else "-"

    for r in rows:
        extra = f"{pair(r.get('fastnas')):>19}" if args.fastnas else ""
        wall = "-" if r["wall_seconds"] is None else f"{r['wall_seconds']:.0f}"
        print(f"{r['job']:<44}{pair(r['search']):>17}{pair(r['int8']):>16}"
              f"{pair(r['uniform']):>19}{extra}{wall:>8}")


def _say(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def _summarise(outcome, **fields) -> dict:
    def final(rows):
        ok = [r for r in rows if r.feasible and r.has_model]
        if not ok:
            return None
        b = max(ok, key=lambda r: (r.accuracy, -(r.latency_ms or 0)))
        return {"trial": b.trial_id, "val": b.accuracy, "test": b.test_accuracy,
                "latency_ratio": b.latency_ratio, "latency_ms": b.latency_ms,
                "finetune_steps": b.finetune_steps}

    res = outcome.results
    measured = [r for r in res if r.stage != "scored" and not r.reference]
    return {"job": fields.pop("name"), **fields,
            "baseline_val": outcome.baseline["accuracy"],
            "baseline_test": outcome.baseline["test_accuracy"],
            "search": final([r for r in res if not r.reference]),
            "int8": final([r for r in res if r.reference == "int8"]),
            "uniform": final([r for r in res if r.reference == "uniform"]),
            "measured": len(measured),
            "measured_within_budget": sum(r.feasible for r in measured),
            "wall_seconds": fields.pop("wall")}


def fidelity(args) -> None:
    """Each evaluator's score of the same random predicted-feasible policies against the
    validation accuracy after the final fine-tune recipe, started where a job would start
    it: from the plainly pruned baseline (bn_recal, finetune, the references) and from the
    supernet's weights (supernet)."""
    import torch

    from slimtune.baseline import prepare_baseline
    from slimtune.evaluators.factory import build_evaluator
    from slimtune.finetune import finetune
    from slimtune.job import preflight
    from slimtune.measurement.predictor import random_policies
    from slimtune.pipeline.finalize import final_recipe
    from slimtune.pipeline.job import build_screen
    from slimtune.pipeline.measure import Budget
    from slimtune.train import accuracy, predict
    from slimtune.trial import TrialContext

    data = _job(args, name="fidelity", fraction=args.fractions[0], searcher="random",
                evaluator="bn_recal", seed=0)
    spec = parse_spec(data)
    prep = preflight(spec)
    baseline = prepare_baseline(spec, prep.data).model
    torch.set_num_threads(spec.target.threads)
    ctx = TrialContext(spec=spec, table=prep.table, baseline_state=baseline.state_dict(),
                       data=prep.data, budget_ms=prep.baseline_ms * args.fractions[0],
                       trials_dir=args.out / "fidelity")
    budget = Budget(ms=ctx.budget_ms, fraction=args.fractions[0], baseline_ms=prep.baseline_ms)
    screen = build_screen(ctx, baseline, budget, print)
    pool = [p for p in random_policies(prep.space, args.policies * 20, seed=7)
            if screen.admits(p)][:args.policies]
    scorers = {name: build_evaluator(name, spec, baseline, prep.table, prep.data, prep.space,
                                     print) for name in args.evaluators if name != "finetune"}
    plain = scorers.get("bn_recal") or build_evaluator("bn_recal", spec, baseline,
                                                       prep.table, prep.data)
    starts = {"plain": plain, **({"supernet": scorers["supernet"]} if "supernet" in scorers
                                 else {})}
    recipe = final_recipe(spec, len(prep.data.train))
    val = prep.data.val
    rows = []
    for i, policy in enumerate(pool):
        t0 = time.perf_counter()
        row: dict = {"policy": i, "predicted_ratio": screen.predicted_ms(policy)
                     / prep.baseline_ms, **{n: ev.score(policy) for n, ev in scorers.items()}}
        if "finetune" in args.evaluators:  # the per-trial search's score: its short fine-tune
            model = plain.model(policy)
            finetune(model, baseline, prep.table, policy, spec, prep.data.train, seed=i)
            row["finetune"] = accuracy(predict(model, val), val.y)
        for start, ev in starts.items():
            model = ev.model(policy)
            finetune(model, baseline, prep.table, policy, recipe, prep.data.train, seed=i)
            row[f"final_val_{start}"] = accuracy(predict(model, val), val.y)
        row["seconds"] = time.perf_counter() - t0
        rows.append(row)
        print(json.dumps(row), flush=True)

    def rho(score: str, final: str) -> float:
        return float(spearmanr([r[score] for r in rows], [r[final] for r in rows]).statistic)

    spearman = {name: rho(name, "final_val_supernet" if name == "supernet" else
                          "final_val_plain") for name in args.evaluators}
    if "supernet" in scorers:  # the supernet's score against fine-tunes from plain weights
        spearman["supernet_vs_plain_start"] = rho("supernet", "final_val_plain")
    result = {"policies": len(rows), "fraction": args.fractions[0],
              "finalize_steps": recipe.finetune.steps,
              "finetune_steps": spec.finetune.steps, "spearman": spearman, "rows": rows}
    (args.out / "fidelity.json").write_text(json.dumps(result, indent=2))
    for name, value in spearman.items():
        print(f"Spearman({name} score, final val) over {len(rows)} policies: {value:.3f}")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("mode", choices=["compare", "fidelity", "fastnas"],
                    help="fastnas: the FastNAS column again for finished compare --jobs")
    ap.add_argument("--arch", default="resnet20")
    ap.add_argument("--bits", type=int, nargs="+", default=None,
                    help="space.bits (default: the quickstart's, 32 and 8)")
    ap.add_argument("--bits-per", choices=["layer", "model"], default=None,
                    help="space.bits_per (default: the quickstart's)")
    ap.add_argument("--skip-blocks", action="store_true",
                    help="elastic depth: residual blocks may be dropped (space.skip_blocks)")
    ap.add_argument("--searchers", nargs="+", default=["tpe"])
    ap.add_argument("--evaluators", nargs="+", default=["bn_recal"])
    ap.add_argument("--seeds", type=int, nargs="+", default=[0])
    ap.add_argument("--fractions", type=float, nargs="+", default=[0.5])
    ap.add_argument("--candidates", type=int, default=160)
    ap.add_argument("--trials", type=int, default=8,
                    help="search.trials: candidates timed paired (scoring evaluators)")
    ap.add_argument("--finalize-epochs", type=float, default=2.0,
                    help="finalize.epochs: every final model's fine-tune (188 steps at 2)")
    ap.add_argument("--train-size", type=int, default=None,
                    help="training examples (default: the quickstart's 12,000; 58000 with "
                         "the 2,000-example validation split is all of Fashion-MNIST's)")
    ap.add_argument("--test-size", type=int, default=None,
                    help="test examples with --train-size (default: all)")
    ap.add_argument("--baseline-epochs", type=float, default=None,
                    help="the baseline's training epochs (default: the quickstart's 2)")
    ap.add_argument("--finalize-max-epochs", type=float, default=None,
                    help="finalize.max_epochs: rounds of --finalize-epochs while a final "
                         "model still gains on validation (default: none, one round)")
    ap.add_argument("--score-val-size", type=int, default=None,
                    help="scoring.val_size (default: the quickstart's, 500)")
    ap.add_argument("--top-k", type=int, default=2,
                    help="finalize.top_k: searched winners fine-tuned")
    ap.add_argument("--finetune-trials", type=int, default=16)
    ap.add_argument("--policies", type=int, default=20)
    ap.add_argument("--fastnas", action="store_true",
                    help="compare: add NVIDIA ModelOpt FastNAS at the FLOPs meeting the same "
                         "budget (needs nvidia-modelopt: see benchmarks/README.md)")
    ap.add_argument("--fastnas-probes", type=int, default=5,
                    help="FLOPs fractions FastNAS is run at (bisection), each timed paired")
    ap.add_argument("--side-by-side-rounds", type=int, default=9,
                    help="compare/fastnas: rounds of the interleaved re-timing of every "
                         "model a row hands out (0: none)")
    ap.add_argument("--jobs", type=Path, nargs="+", default=[],
                    help="fastnas: finished compare job directories (each with job.yaml)")
    ap.add_argument("--out", type=Path, default=Path("runs/bench/search"))
    args = ap.parse_args()
    if args.mode == "fastnas":
        args.fastnas = True
        if not args.jobs:
            ap.error("fastnas needs --jobs: finished compare job directories")
        if bad := [str(j) for j in args.jobs if not (j / "job.yaml").is_file()
                   or not (j / "pareto.json").is_file()]:
            ap.error(f"not a finished job (no job.yaml or pareto.json): {', '.join(bad)}")
    if args.fastnas and (why := missing()):
        print(f"search_quality.py: {why}", file=sys.stderr)
        sys.exit(2)
    args.out.mkdir(parents=True, exist_ok=True)
    {"compare": compare, "fidelity": fidelity, "fastnas": fastnas_again}[args.mode](args)


if __name__ == "__main__":
    main()
