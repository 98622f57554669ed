"""``slimtune agent train JOB --out agent.zip``: train a PPO compression agent (AMC).

Every episode compresses the job's model once (one layer per step) and is logged to
MLflow as a child run of the training run; the agent is saved as ``agent.zip`` and
attached to that run.
"""

from __future__ import annotations

import argparse
import warnings
from pathlib import Path

from slimtune.errors import UserInputError

NAME = "agent"
HELP = "train a PPO compression agent on a job's model (agent train)"
ORDER = 40


def add_arguments(p: argparse.ArgumentParser) -> None:
    sub = p.add_subparsers(dest="agent_command", required=True, metavar="ACTION")
    train = sub.add_parser("train", help="train an agent with PPO on the AMC env")
    train.add_argument("job", help="job spec YAML file, or a built-in job name")
    train.add_argument("--out", required=True, type=Path, help="where to write agent.zip")
    train.add_argument("--timesteps", type=int, help="env steps to train (agent.timesteps)")
    train.add_argument("--init", type=Path, help="start from this agent.zip (agent.init)")
    train.add_argument("--overwrite", action="store_true", help="replace an existing --out")


def run(args: argparse.Namespace) -> int:
    from slimtune.spec import load_spec

    spec = load_spec(args.job)
    if spec.space.rank:
        raise UserInputError("space.rank: an agent decides channels and bits only, it does "
                             "not factorise layers: remove space.rank to train one")
    out: Path = args.out
    if out.suffix != ".zip":
        raise UserInputError(f"--out {out}: an agent file ends in .zip")
    if out.exists() and not args.overwrite:
        raise UserInputError(f"--out {out} exists (pass --overwrite to replace it)")
    if args.timesteps is not None and args.timesteps < 1:
        raise UserInputError("--timesteps must be at least 1")
    if args.init is not None:
        spec = spec.with_sections(agent={"init": args.init.resolve()})
    if spec.agent.init is not None:
        from slimtune.agents.agent import read_agent_file

        read_agent_file(spec.agent.init)
    warnings.filterwarnings("ignore")
    from slimtune.commands.apply import say
    from slimtune.envs.compression import CompressionEnv
    from slimtune.envs.problem import prepare_problem

    problem = prepare_problem(spec, say=say)
    say(f"{spec.model.describe()}: baseline {problem.baseline_ms:.3f} ms, budget "
        f"{problem.budget_ms:.3f} ms, {len(problem.table.layers)} layers per episode")
    describe = getattr(problem.predictor, "describe", None)
    if describe is not None:
        say(describe())
    return _train(spec, problem, CompressionEnv(problem=problem), out,
                  args.timesteps or spec.agent.timesteps)


def _train(spec, problem, env, out: Path, timesteps: int) -> int:
    from slimtune.agents import propose_policy, train_agent
    from slimtune.commands.apply import say
    from slimtune.job import _flat_params
    from slimtune.results.tracking import Tracker

    tracker = Tracker(spec.tracking_uri, spec.experiment)
    try:
        parent = tracker.start_job(f"{spec.name}-agent", _flat_params(spec),
                                   {"slimtune.kind": "agent", "searcher": "ppo"})

        def on_episode(result, reward: float) -> None:
            run_id = tracker.start_trial(result.trial_id,
                                         problem.space.params_from_policy(result.policy),
                                         "ppo-episode")
            tracker.log(run_id, metrics={"reward": reward})
            tracker.end_trial(run_id, result)
            if (result.trial_id + 1) % 10 == 0:
                say(f"episode {result.trial_id + 1}: reward {reward:.4f}")

        say(f"training PPO for {timesteps} env steps")
        trained = train_agent(env, spec.agent, seed=spec.search.seed, timesteps=timesteps,
                              on_episode=on_episode)
        trained.agent.save(out)
        policy = propose_policy(trained.agent, env)
        _, final = env.score(policy, measure=True)
        episodes = len(trained.episodes)
        feasible = sum(r.feasible for r, _ in trained.episodes)
        tracker.log(parent, metrics={
            "episodes": episodes, "feasible_episodes": feasible,
            "seconds_per_step": trained.seconds_per_step,
            "seconds_per_episode": trained.seconds / max(episodes, 1),
            "final_proxy_accuracy": final["proxy_accuracy"],
            "final_latency_ms": final["measured_latency_ms"]})
        tracker.log_artifacts(parent, [out])
        tracker.end(parent, "FINISHED")
    except BaseException as err:
        tracker.close_on(err)
        raise
    print(f"{episodes} episodes ({feasible} within the {problem.budget_ms:.3f} ms budget) in "
          f"{trained.seconds:.0f} s: {1e3 * trained.seconds_per_step:.1f} ms per step, "
          f"{trained.seconds / max(episodes, 1):.2f} s per episode")
    print(f"deterministic policy: proxy accuracy {final['proxy_accuracy']:.4f}, "
          f"{final['measured_latency_ms']:.3f} ms measured "
          f"({'within' if final['feasible'] else 'OVER'} the budget)")
    print(f"agent:  {out.resolve()}")
    print(f"MLflow: run {parent} in experiment {spec.experiment!r}")
    return 0
