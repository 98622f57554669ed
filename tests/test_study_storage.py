"""Where a job's Optuna study lives: in memory for a scoring search, written once to
DIR/study.db when it ends; in the RDB storage as it goes for a per-trial search."""

from __future__ import annotations

import optuna

from slimtune.resume import STUDY_FILE, new_study, save_study
from slimtune.spec import parse_spec
from tests.jobs import tiny_job


def test_a_scoring_search_keeps_its_study_in_memory_and_writes_it_once(tmp_path):
    spec = parse_spec(tiny_job(tmp_path, search={"evaluator": "bn_recal"}))
    storage, name = new_study(spec, tmp_path)
    assert isinstance(storage, optuna.storages.InMemoryStorage) and name.startswith("tiny-")
    study = optuna.create_study(storage=storage, study_name=name, directions=["maximize"])
    for i in range(5):
        trial = study.ask()
        trial.suggest_categorical("r", [0.0, 0.25, 0.5])
        study.tell(trial, i / 10)
    assert not (tmp_path / STUDY_FILE).exists()
    save_study(storage, name, tmp_path)
    saved = optuna.load_study(study_name=name, storage=f"sqlite:///{tmp_path / STUDY_FILE}")
    assert [t.value for t in saved.trials] == [t.value for t in study.trials]
    assert [t.params for t in saved.trials] == [t.params for t in study.trials]


def test_a_study_never_made_writes_nothing(tmp_path):
    spec = parse_spec(tiny_job(tmp_path, search={"evaluator": "supernet"}))
    storage, name = new_study(spec, tmp_path)  # a searcher that is not Optuna's: no study
    save_study(storage, name, tmp_path)
    assert not (tmp_path / STUDY_FILE).exists()


def test_a_per_trial_search_or_a_given_storage_stays_in_its_rdb(tmp_path):
    finetune = parse_spec(tiny_job(tmp_path))  # evaluator: finetune, resumable
    assert new_study(finetune, tmp_path)[0] == f"sqlite:///{tmp_path / STUDY_FILE}"
    url = f"sqlite:///{tmp_path / 'team.db'}"
    given = parse_spec(tiny_job(tmp_path, search={"evaluator": "bn_recal", "storage": url}))
    storage, name = new_study(given, tmp_path)
    assert storage == url
    save_study(storage, name, tmp_path)  # nothing to copy: it is stored already
    assert not (tmp_path / STUDY_FILE).exists()
