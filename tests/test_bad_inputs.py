"""A corpus of hostile or broken inputs: each is refused with one line and exit 2, before
compute, with nothing written (no output directory, no MLflow store, no side effect)."""

from __future__ import annotations

import pickle

import numpy as np
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


def _user_data_corpus(tmp_path) -> list[tuple[str, dict, dict | None, str]]:
    """(id, data section, model section or None for tiny_resnet, expected fragment)."""
    from PIL import Image

    from tests.datafiles import tabular, write_data_module, write_image_folder, write_npz

    mod = write_data_module(tmp_path, "user_data_bad")
    write_image_folder(tmp_path / "one", classes=("only",))
    write_image_folder(tmp_path / "mismatch", counts={"train": 2, "test": 1})
    (tmp_path / "mismatch" / "test" / "dog").rename(tmp_path / "mismatch" / "test" / "wolf")
    write_image_folder(tmp_path / "sizes", classes=("a", "b"), counts={"train": 2, "test": 1})
    Image.new("RGB", (5, 9)).save(tmp_path / "sizes" / "test" / "b" / "odd.png")
    write_image_folder(tmp_path / "broken", classes=("a", "b"), counts={"train": 2, "test": 1})
    (tmp_path / "broken" / "train" / "b" / "bad.png").write_bytes(b"\x89PNG not really")
    (tmp_path / "flat" / "train").mkdir(parents=True)
    (tmp_path / "flat" / "test").mkdir()
    x, y = tabular(20)
    write_npz(tmp_path / "nokeys.npz", x_test=None, y_test=None)
    write_npz(tmp_path / "range.npz", y_val=np.full(20, 3), class_names=np.array(["a", "b", "c"]))
    write_npz(tmp_path / "negative.npz", y_test=-np.ones(20, np.int64))
    write_npz(tmp_path / "lengths.npz", y_train=y)
    write_npz(tmp_path / "onecls.npz", y_train=np.zeros(60, np.int64), y_val=np.zeros(20),
              y_test=np.zeros(20))
    write_image_folder(tmp_path / "grey", classes=("a", "b"), counts={"train": 2, "test": 1},
                       mode="L")
    write_npz(tmp_path / "huge.npz", y_test=np.full(20, 10**9))
    (tmp_path / "garbage.npz").write_bytes(b"not a zip")
    np.save(tmp_path / "single.npy", x)
    mlp = {"import": "tests.test_userdata:mlp"}
    return [
        ("folder-missing", {"folder": "nowhere"}, None, "not found"),
        ("folder-one-class", {"folder": "one"}, None, "one class folder"),
        ("folder-mismatch", {"folder": "mismatch"}, None, "only in train: dog; only in test: wolf"),
        ("folder-sizes", {"folder": "sizes"}, None, "set data.size"),
        ("folder-unreadable", {"folder": "broken"}, None, "bad.png"),
        ("folder-no-classes", {"folder": "flat"}, None, "no class subfolders"),
        ("npz-missing", {"npz": "nowhere.npz"}, mlp, "npz file not found"),
        ("npz-keys", {"npz": "nokeys.npz"}, mlp, "lacks x_test, y_test"),
        ("npz-range", {"npz": "range.npz"}, mlp, "label 3 is out of range for 3 classes"),
        ("npz-negative", {"npz": "negative.npz"}, mlp, "found -1"),
        ("npz-lengths", {"npz": "lengths.npz"}, mlp, "x_train has 60 examples but y_train"),
        ("npz-one-class", {"npz": "onecls.npz"}, mlp, "at least 2"),
        ("npz-huge-label", {"npz": "huge.npz"}, mlp, "not a class index"),
        ("folder-mean-channels", {"folder": "grey", "mean": [0.1, 0.2, 0.3]}, None,
         "3 values but the images have 1 channel"),
        ("npz-garbage", {"npz": "garbage.npz"}, mlp, "is not an .npz archive"),
        ("npz-single-array", {"npz": "single.npy"}, mlp, "holds one array (.npy)"),
        ("import-missing", {"import": "no_such_pkg_xyz.data:splits"}, None, "cannot import"),
        ("import-no-attr", {"import": f"{mod}:nothing"}, None, "has no attribute 'nothing'"),
        ("import-wrong-type", {"import": f"{mod}:wrong"}, None, "returned a int"),
        ("import-raises", {"import": f"{mod}:raises"}, None, "disk on fire"),
        ("import-bad-items", {"import": f"{mod}:bad_items"}, None, "(input, label) pair"),
        ("import-float-labels", {"import": f"{mod}:float_labels"}, mlp, "integer class index"),
        ("two-sources", {"dataset": "synthetic", "npz": "t.npz"}, None, "exactly one of"),
        ("model-too-few-logits", {"npz": write_npz(tmp_path / "ok.npz").name},
         {"import": "tests.test_userdata:two_logits"},
         "outputs 2 logits per example but the data has 3"),
        ("model-no-tensor", {"dataset": "synthetic"},
         {"import": "tests.test_model_outputs:no_tensor_net"}, "no tensor in it"),
        ("output-key-missing", {"dataset": "synthetic"},
         {"import": "tests.test_model_outputs:dict_net", "output_key": "scores"},
         "no such part"),
    ]


def test_bad_user_data_and_models_refused(tmp_path, capsys, monkeypatch):
    monkeypatch.syspath_prepend(str(tmp_path))
    corpus = _user_data_corpus(tmp_path)
    for name, data, model, expected in corpus:
        job = {**tiny_job(tmp_path), "data": data,
               "model": model or {"arch": "tiny_resnet"}}
        spec = tmp_path / f"{name}.yaml"
        spec.write_text(yaml.safe_dump(job))
        for command in (["validate", str(spec)], ["run", str(spec), "--out",
                                                  str(tmp_path / "out")]):
            code = main(command)
            try:
                _check_refused(capsys, tmp_path, code, expected)
            except AssertionError as e:
                raise AssertionError(f"{name}: {e}") from None
