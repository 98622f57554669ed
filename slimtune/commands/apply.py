"""``slimtune apply --agent agent.zip JOB --out DIR``: a trained agent on a new model.

The agent runs once, deterministically, on the job's model with the job's own budget
(clipped by the budget wall); its policy is then evaluated like a one-trial run:
fine-tuned, deployed, measured on the target, written with the same result files,
plus ``DIR/policy.json`` and ``DIR/layers.json``.
"""

from __future__ import annotations

import argparse
import sys
import warnings
from pathlib import Path

NAME = "apply"
HELP = "run a trained agent on a (new) model and evaluate its policy"
ORDER = 45


def say(message: str) -> None:
    print(f"slimtune: {message}", file=sys.stderr, flush=True)


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("job", help="job spec YAML file of the model to compress")
    p.add_argument("--agent", required=True, type=Path, help="a trained agent.zip")
    p.add_argument("--out", required=True, type=Path, help="output directory")
    p.add_argument("--overwrite", action="store_true",
                   help="replace the outputs of an earlier job in --out")
    p.add_argument("--address", help="Ray cluster address (default: a local Ray on 127.0.0.1)")
    p.add_argument("--verbose", action="store_true", help="show Ray and library logs")


def run(args: argparse.Namespace) -> int:
    from slimtune.agents.agent import CompressionAgent
    from slimtune.job import check_out_dir
    from slimtune.spec import load_spec

    agent = CompressionAgent.load(args.agent)
    # one candidate: the agent's policy (a scoring job scores, times and finalizes it, with
    # the references beside it; with search.evaluator: supernet, on this model's own supernet).
    # No refine walks: what is judged and saved is the agent's own policy
    spec = load_spec(args.job).with_overrides(trials=1, searcher="ppo", candidates=1, refine=0)
    check_out_dir(args.out, overwrite=args.overwrite)
    if not args.verbose:
        warnings.filterwarnings("ignore")
    from slimtune.agents import propose_measured
    from slimtune.agents.transfer import left_out_note
    from slimtune.envs.compression import CompressionEnv
    from slimtune.envs.problem import prepare_problem
    from slimtune.job import run_job
    from slimtune.results.summary import failure_line, print_summary
    from slimtune.search.fixed import FixedSearcher
    from slimtune.trial import save_layer_table

    problem = prepare_problem(spec, say=say)
    env = CompressionEnv(problem=problem)
    describe = getattr(problem.predictor, "describe", None)
    if describe is not None:
        say(describe())
    policy, attempts = propose_measured(agent, env)
    policy, _changed = problem.space.restrict(policy)  # the env offers no more than the space
    trained_on = agent.card.trained_on.get("model", "?")
    say(f"agent trained on {trained_on} applied to {spec.model.describe()} "
        f"({len(problem.table.layers)} layers), budget {problem.budget_ms:.3f} ms:")
    for d in env.builder.decisions:
        clip = f" (proposed {d.proposed.ratio:g}/{d.proposed.bits}, clipped)" if d.clipped else ""
        say(f"  {d.layer}: ratio {d.chosen.ratio:g}, {d.chosen.bits} bits{clip}")
    for line in left_out_note(problem.space):
        say(line)
    for i, a in enumerate(attempts):
        say(f"attempt {i + 1}: wall correction {a.correction:.2f}, predicted "
            f"{a.predicted_ms:.3f} ms, measured {a.measured_ms:.3f} ms "
            f"({'within' if a.feasible else 'over'} the budget)")
    say("evaluating the policy: fine-tune, deploy, measure with the full protocol")
    outcome = run_job(spec, args.out, overwrite=args.overwrite, address=args.address,
                      verbose=args.verbose,
                      searcher=FixedSearcher(problem.space, [policy], name="agent"))
    policy.save(outcome.out_dir / "policy.json")
    save_layer_table(outcome.out_dir, problem.table)
    print_summary(outcome)
    result = next(r for r in outcome.results if not r.reference)  # the agent's policy
    timed = f"{result.latency_ms:.3f} ms measured" if result.latency_ms is not None \
        else "not timed: predicted beyond the budget"
    print(f"policy:     {outcome.out_dir / 'policy.json'}  ({result.state}, {result.stage}: "
          f"{timed}, budget {outcome.budget_ms:.3f} ms)")
    failure = failure_line(outcome)
    if failure is not None:  # the agent's policy failed to build, train or deploy (exit 1)
        print(f"slimtune: error: {failure}", file=sys.stderr)
        return 1
    return 0
