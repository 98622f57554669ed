"""Searchers continued after a stop (fast: no Ray, a real Optuna SQLite storage)."""

from __future__ import annotations

import optuna

from slimtune.resume import free_ids
from slimtune.search import make_searcher
from slimtune.search.optuna_searcher import DUPLICATE
from slimtune.search.resume import policy_key, resume_searcher
from tests.test_search import fake_result, space  # noqa: F401 - the fixture


def _run(searcher, n: int, start: int = 0) -> list:
    results = []
    for i in range(start, start + n):
        policy = searcher.ask()
        result = fake_result(policy, i)
        searcher.tell(policy, result)
        results.append(result)
    return results


def test_optuna_study_continues_from_storage(tmp_path, space):  # noqa: F811
    storage = f"sqlite:///{tmp_path / 'study.db'}"
    first = make_searcher("tpe", space, seed=0, trials=8, warm_start="uniform",
                          storage=storage, study_name="job-1")
    done = _run(first, 3)
    interrupted = first.ask()  # asked, never told: the crash

    again = make_searcher("tpe", space, seed=0, trials=8, warm_start="uniform",
                          storage=storage, study_name="job-1")
    again = resume_searcher(again, done)
    rerun = again.ask()
    assert policy_key(rerun) == policy_key(interrupted)  # the interrupted policy first
    again.tell(rerun, fake_result(rerun, 3))
    rest = _run(again, 4, start=4)
    keys = [policy_key(r.policy) for r in done] + [policy_key(rerun)] + \
        [policy_key(r.policy) for r in rest]
    assert len(set(keys)) == 8  # warm starts not enqueued twice, no policy drawn again

    study = optuna.load_study(study_name="job-1", storage=storage)
    states = [t.state for t in study.trials if DUPLICATE not in t.user_attrs]
    assert states.count(optuna.trial.TrialState.COMPLETE) == 8
    assert states.count(optuna.trial.TrialState.FAIL) == 1  # the interrupted one

    # a second crash and resume does not enqueue the first interruption again
    third = resume_searcher(make_searcher("tpe", space, seed=0, trials=8, storage=storage,
                                          study_name="job-1"),
                            done + [fake_result(rerun, 3)] + rest)
    waiting = [t for t in third.study.trials if t.state == optuna.trial.TrialState.WAITING]
    assert waiting == []


def test_uniform_replay_gives_the_policies_of_a_job_that_never_stopped(space):  # noqa: F811
    whole = _run(make_searcher("uniform", space, seed=0, trials=10), 10)
    stopped = _run(make_searcher("uniform", space, seed=0, trials=10), 4)
    resumed = resume_searcher(make_searcher("uniform", space, seed=0, trials=10), stopped)
    rest = _run(resumed, 6, start=4)
    assert [policy_key(r.policy) for r in stopped + rest] == \
        [policy_key(r.policy) for r in whole]


def test_free_ids_fill_gaps_then_continue():
    assert free_ids([0, 1, 3], 3) == [2, 4, 5]
    assert free_ids([], 2) == [0, 1]


def test_a_trial_recorded_but_not_told_is_not_run_again(tmp_path, space):  # noqa: F811
    """The crash came after trials.jsonl had the result, before Optuna was told."""
    storage = f"sqlite:///{tmp_path / 'study.db'}"
    first = make_searcher("tpe", space, seed=0, trials=6, storage=storage, study_name="j")
    done = _run(first, 2)
    recorded_not_told = first.ask()
    done.append(fake_result(recorded_not_told, 2))

    again = resume_searcher(make_searcher("tpe", space, seed=0, trials=6, storage=storage,
                                          study_name="j"), done)
    states = [t.state for t in again.study.get_trials(deepcopy=False)
              if DUPLICATE not in t.user_attrs]
    assert states.count(optuna.trial.TrialState.COMPLETE) == 3  # told from the record
    assert optuna.trial.TrialState.WAITING not in states  # nothing enqueued again
    rest = _run(again, 3, start=3)
    keys = [policy_key(r.policy) for r in done + rest]
    assert len(set(keys)) == 6
