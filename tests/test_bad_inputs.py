"""A corpus of hostile or broken inputs: each is refused with one line and exit 2, before
compute, with nothing written (no output directory, no MLflow store, no side effect)."""

from __future__ import annotations

import pickle

import pytest
import torch
import yaml

from slimtune.cli import main
from slimtune.errors import UserInputError
from slimtune.security import confined, host_of, is_loopback, warn_if_exposed_ray
from tests.jobs import tiny_job


class RunsCode:
    """Unpickling this runs a command (the attack ``weights_only=True`` must stop)."""

    def __init__(self, marker: str) -> None:
        self.marker = marker

    def __reduce__(self):
        import os

        return (os.system, (f"touch {self.marker}",))


def _yaml_with(tmp_path, **overrides) -> str:
    return yaml.safe_dump(tiny_job(tmp_path, **overrides))


def _corpus(tmp_path) -> list[tuple[str, str, str]]:
    """(id, spec text, expected fragment of the error line)."""
    good = _yaml_with(tmp_path)
    marker = tmp_path / "pwned"
    laughs = "a: &a [x, x, x, x, x, x, x, x, x]\n" + "".join(
        f"{chr(98 + i)}: &{chr(98 + i)} [*{chr(97 + i)}, *{chr(97 + i)}, *{chr(97 + i)}, "
        f"*{chr(97 + i)}, *{chr(97 + i)}, *{chr(97 + i)}, *{chr(97 + i)}, *{chr(97 + i)}]\n"
        for i in range(8))
    return [
        ("truncated-yaml", good[: len(good) // 2] + "{[", "not valid YAML"),
        ("cut-mid-flow", "name: x\nmodel: {arch: tiny_res", "not valid YAML"),
        ("empty", "", "YAML mapping"),
        ("a-list", "- a\n- b\n", "YAML mapping"),
        ("binary", "\x00\x01\x02garbage\xff", "not valid YAML"),
        ("python-tag", f"name: !!python/object/apply:os.system ['touch {marker}']\n",
         "not valid YAML"),
        ("billion-laughs", laughs + good, "unknown key"),
        ("trials-str", _yaml_with(tmp_path, search={"trials": "many"}), "search.trials"),
        ("budget-str", _yaml_with(tmp_path, budget={"latency_ms": "fast"}), "latency_ms"),
        ("budget-nan", _yaml_with(tmp_path, budget={"latency_ms": float("nan")}),
         "latency_ms"),
        ("fraction-inf", _yaml_with(tmp_path, budget={"latency_fraction": float("inf")}),
         "latency_fraction"),
        ("data-list", _yaml_with(tmp_path, data=[1, 2]), "data"),
        ("model-int", _yaml_with(tmp_path, model=5), "model"),
        ("huge-trials", _yaml_with(tmp_path, search={"trials": 10**12}), "search.trials"),
        ("huge-concurrency", _yaml_with(tmp_path, search={"concurrency": 10**9}),
         "search.concurrency"),
        ("huge-threads", _yaml_with(tmp_path, target={"threads": 10**9}), "target.threads"),
        ("huge-batch", _yaml_with(tmp_path, target={"batch_size": 10**9}),
         "target.batch_size"),
        ("huge-train-size", _yaml_with(tmp_path, data={"dataset": "synthetic",
                                                       "train_size": 10**12}),
         "data.train_size"),
        ("huge-steps", _yaml_with(tmp_path, finetune={"steps": 10**12}), "finetune.steps"),
        ("huge-epochs", _yaml_with(tmp_path, baseline={"epochs": 1e12}), "baseline.epochs"),
        ("huge-int", _yaml_with(tmp_path, search={"seed": 0, "trials": 2**200}),
         "search.trials"),
        ("name-traversal", _yaml_with(tmp_path, name="../../etc"), "name"),
        ("name-slash", _yaml_with(tmp_path, name="a/b"), "name"),
        ("storage-file", _yaml_with(tmp_path, search={"storage": "file:///etc/passwd"}),
         "storage"),
        ("weights-traversal", _yaml_with(tmp_path, model={
            "arch": "tiny_resnet", "weights": "../../../../../../etc/hostname"}), "weights"),
    ]


def _check_refused(capsys, tmp_path, code: int, expected: str) -> None:
    err = capsys.readouterr().err
    lines = [line for line in err.splitlines() if line.strip()]
    assert code == 2, err
    assert len(lines) == 1, err
    assert lines[0].startswith("slimtune: error: ") and expected in lines[0], lines[0]
    assert not (tmp_path / "out").exists()
    assert not (tmp_path / "mlruns.db").exists()
    assert not (tmp_path / "pwned").exists()


def test_bad_spec_corpus(tmp_path, capsys):
    corpus = _corpus(tmp_path)
    for name, text, expected in corpus:
        spec = tmp_path / f"{name}.yaml"
        spec.write_bytes(text.encode("utf-8", "surrogateescape"))
        for command in (["run", str(spec), "--out", str(tmp_path / "out")],
                        ["validate", str(spec)]):
            try:
                code = main(command)
            except SystemExit as exit_:  # argparse
                code = exit_.code
            _check_refused(capsys, tmp_path, code, expected)
    assert len(corpus) >= 25


def test_pickle_that_runs_code_is_refused(tmp_path, capsys):
    marker = tmp_path / "pwned"
    with open(tmp_path / "evil.pt", "wb") as f:
        pickle.dump({"conv1.weight": RunsCode(str(marker))}, f)
    torch.save({"x": RunsCode(str(marker))}, tmp_path / "evil2.pt")  # torch's own format
    for weights in ("evil.pt", "evil2.pt"):
        spec = tmp_path / "job.yaml"
        spec.write_text(yaml.safe_dump(tiny_job(tmp_path, model={"arch": "tiny_resnet",
                                                                  "weights": weights})))
        code = main(["run", str(spec), "--out", str(tmp_path / "out")])
        _check_refused(capsys, tmp_path, code, "weights")
    assert not marker.exists()


def test_truncated_and_garbage_weights(tmp_path, capsys):
    torch.save({"conv1.weight": torch.zeros(4, 1, 3, 3)}, tmp_path / "w.pt")
    data = (tmp_path / "w.pt").read_bytes()
    (tmp_path / "cut.pt").write_bytes(data[: len(data) // 2])
    (tmp_path / "zip.pt").write_bytes(b"PK\x03\x04" + b"\x00" * 64)
    for weights in ("cut.pt", "zip.pt", "missing.pt"):
        spec = tmp_path / "job.yaml"
        spec.write_text(yaml.safe_dump(tiny_job(tmp_path, model={"arch": "tiny_resnet",
                                                                  "weights": weights})))
        code = main(["run", str(spec), "--out", str(tmp_path / "out")])
        _check_refused(capsys, tmp_path, code, "weights")


def test_resume_refuses_what_it_cannot_continue(tmp_path, capsys):
    spec = tmp_path / "job.yaml"
    spec.write_text(_yaml_with(tmp_path))
    code = main(["run", str(spec), "--out", str(tmp_path / "out"), "--resume"])
    _check_refused(capsys, tmp_path, code, "no job to resume")
    other = tmp_path / "other"
    other.mkdir()
    (other / "job.yaml").write_text(_yaml_with(tmp_path, search={"trials": 7}))
    code = main(["run", str(spec), "--out", str(other), "--resume"])
    err = capsys.readouterr().err
    assert code == 2 and "the spec differs" in err and len(err.strip().splitlines()) == 1
    assert sorted(p.name for p in other.iterdir()) == ["job.yaml"]  # nothing written
    code = main(["run", str(spec), "--out", str(other), "--resume", "--overwrite"])
    assert code == 2 and "exclude each other" in capsys.readouterr().err


def test_submit_refuses_before_sending(tmp_path, capsys, monkeypatch):
    spec = tmp_path / "job.yaml"
    spec.write_text(_yaml_with(tmp_path))
    cases = [
        (["submit", str(spec)], "RAY_ADDRESS"),  # no address anywhere
        (["submit", str(spec), "--address", "127.0.0.1:6379"], "dashboard"),  # not a URL
        (["submit", str(spec), "--address", "http://127.0.0.1:9", "--out", "../../x"],
         "--out"),
        (["submit", str(spec), "--address", "http://127.0.0.1:9", "--working-dir",
          str(tmp_path / "elsewhere")], "working-dir"),
        (["submit", str(tmp_path / "nope.yaml"), "--address", "http://127.0.0.1:9"],
         "no such job spec"),
    ]
    (tmp_path / "elsewhere").mkdir()
    for argv, expected in cases:
        code = main(argv)
        err = capsys.readouterr().err
        lines = [line for line in err.splitlines() if line.strip()]
        assert code == 2, (argv, err)
        assert len(lines) == 1 and expected in lines[0], (argv, err)
    # a cluster that is not there: one line, exit 1 (port 9: discard, nothing listens)
    assert main(["status", "x", "--address", "http://127.0.0.1:9"]) == 1
    assert len(capsys.readouterr().err.strip().splitlines()) == 1


def test_confined_paths_and_exposure_warnings(capsys, monkeypatch):
    for bad in ("../x", "a/../../b", "/etc", ""):
        with pytest.raises(UserInputError):
            confined(bad, "--out")
    assert str(confined("runs/a", "--out")) == "runs/a"
    assert host_of("http://0.0.0.0:8265") == "0.0.0.0" and host_of("auto") is None
    assert is_loopback("127.0.0.1") and is_loopback("localhost") and not is_loopback("0.0.0.0")
    monkeypatch.setenv("RAY_AUTH_MODE", "disabled")
    assert warn_if_exposed_ray("http://0.0.0.0:8265")
    assert "token authentication is off" in capsys.readouterr().err
    assert not warn_if_exposed_ray("http://127.0.0.1:8265")
    monkeypatch.setenv("RAY_AUTH_MODE", "token")
    assert not warn_if_exposed_ray("http://10.0.0.5:8265")
