from __future__ import annotations

import pytest
import yaml

from slimtune.errors import SpecError
from slimtune.spec import load_spec, parse_spec

GOOD = {
    "name": "t",
    "model": {"arch": "resnet20"},
    "data": {"dataset": "fashion-mnist"},
    "budget": {"latency_fraction": 0.5},
    "target": {"runtime": "onnxruntime", "threads": 2, "batch_size": 1},
    "search": {"searcher": "tpe", "trials": 16, "seed": 0},
    "tracking": {"uri": "sqlite:///mlruns.db", "experiment": "quickstart"},
}


def test_contract_keys_parse():
    spec = parse_spec(GOOD)
    assert spec.model.arch == "resnet20"
    assert spec.budget.latency_fraction == 0.5
    assert spec.target.runtime == "onnxruntime" and spec.target.batch_size == 1
    assert spec.search.trials == 16
    assert spec.experiment == "quickstart"


def test_import_key_and_relative_weights(tmp_path):
    data = {**GOOD, "model": {"import": "pkg.mod:make", "weights": "w.pt"}}
    spec = parse_spec(data, base_dir=tmp_path)
    assert spec.model.import_ == "pkg.mod:make"
    assert spec.model.weights == tmp_path / "w.pt"
    assert "import: pkg.mod:make" in spec.to_yaml()


def test_builtin_quickstart_and_round_trip(tmp_path):
    spec = load_spec("quickstart")
    path = tmp_path / "job.yaml"
    path.write_text(spec.to_yaml())
    assert load_spec(path) == spec


@pytest.mark.parametrize("change, message", [
    ({"extra": 1}, "extra: unknown key"),
    ({"search": {"trialz": 3}}, "search.trialz: unknown key"),
    ({"budget": {"latency_fraction": -0.5}}, "budget.latency_fraction"),
    ({"budget": {"latency_ms": 0}}, "budget.latency_ms"),
    ({"budget": {}}, "exactly one of"),
    ({"model": {"arch": "a", "import": "b:c"}}, "exactly one of"),
    ({"data": {"dataset": "cifar"}}, "data.dataset"),
    ({"search": {"searcher": "grid"}}, "search.searcher"),
    ({"target": {"runtime": "tensorrt"}}, "target.runtime"),
    ({"space": {"bits": [3]}}, "space.bits"),
    ({"space": {"prune_ratios": [1.0]}}, "space.prune_ratios"),
])
def test_bad_specs_give_one_line(change, message):
    with pytest.raises(SpecError) as err:
        parse_spec({**GOOD, **change})
    assert message in str(err.value)
    assert "\n" not in str(err.value)


def test_missing_required_key():
    data = dict(GOOD)
    del data["budget"]
    with pytest.raises(SpecError, match="budget: required key is missing"):
        parse_spec(data)


def test_file_errors(tmp_path):
    with pytest.raises(SpecError, match="no such job spec file"):
        load_spec(tmp_path / "nope.yaml")
    bad = tmp_path / "bad.yaml"
    bad.write_text("name: [unclosed\n")
    with pytest.raises(SpecError, match="not valid YAML"):
        load_spec(bad)
    scalar = tmp_path / "scalar.yaml"
    scalar.write_text(yaml.safe_dump("just a string"))
    with pytest.raises(SpecError, match="mapping"):
        load_spec(scalar)


def test_overrides_and_env_uri(monkeypatch):
    spec = parse_spec(GOOD).with_overrides(trials=3, searcher="random")
    assert (spec.search.trials, spec.search.searcher) == (3, "random")
    with pytest.raises(SpecError):
        parse_spec(GOOD).with_overrides(searcher="bogus")
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "http://127.0.0.1:5000")
    assert parse_spec(GOOD).tracking_uri == "http://127.0.0.1:5000"
