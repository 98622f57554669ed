"""The user's data: ``data: {import|folder|npz}`` read into the same Dataset as built-ins."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import yaml
from PIL import Image

from slimtune.baseline import baseline_key
from slimtune.cli import main
from slimtune.data import DataError
from slimtune.spec import DataSpec, SpecError, load_spec, parse_spec
from slimtune.userdata import load_data
from tests.datafiles import write_data_module, write_image_folder, write_npz
from tests.jobs import tiny_job


def data(seed: int = 0, **spec) -> object:
    return load_data(DataSpec.model_validate(spec), seed=seed)


def test_folder_rgb_shapes_labels_and_normalisation(tmp_path) -> None:
    root = write_image_folder(tmp_path / "pics", size=(10, 8))  # 10 wide, 8 high
    ds = data(folder=root)
    assert ds.input_shape == (3, 8, 10) and ds.train.x.shape == (18, 3, 8, 10)
    assert ds.class_names == ("cat", "dog", "fox") and ds.num_classes == 3
    assert (len(ds.train), len(ds.val), len(ds.test)) == (18, 6, 6)
    assert ds.train.y.tolist() == [0] * 6 + [1] * 6 + [2] * 6
    mean, std = ds.train.x.mean(dim=(0, 2, 3)), ds.train.x.std(dim=(0, 2, 3))
    assert torch.allclose(mean, torch.zeros(3), atol=1e-4)
    assert torch.allclose(std, torch.ones(3), atol=0.02)
    assert ds.notes == () and ds.fingerprint
    # red is high in class 0 (cat) and low in the others
    red = ds.test.x[:, 0].mean(dim=(1, 2))
    assert red[ds.test.y == 0].min() > red[ds.test.y != 0].max()


def test_folder_options_grey_size_channels_mean_std(tmp_path) -> None:
    grey = write_image_folder(tmp_path / "grey", classes=("a", "b"), mode="L")
    ds = data(folder=grey)
    assert ds.input_shape == (1, 8, 8)
    assert data(folder=grey, channels=3).input_shape == (3, 8, 8)
    mixed = write_image_folder(tmp_path / "mixed", classes=("a", "b"), size=(8, 8),
                               counts={"train": 3, "test": 2}, suffix=".jpg")
    write_image_folder(mixed, classes=("a", "b"), size=(12, 6), counts={"val": 2})
    sized = data(folder=mixed, size=[6, 7])
    assert sized.input_shape == (3, 6, 7) and len(sized.val) == 4
    fixed = data(folder=grey, mean=0.5, std=0.25, size=4)
    raw = np.asarray(Image.open(grey / "train" / "a" / "0.png").resize((4, 4),
                     Image.Resampling.BILINEAR), dtype=np.float32) / 255
    np.testing.assert_allclose(fixed.train.x[0, 0].numpy(), (raw - 0.5) / 0.25, atol=1e-5)


def test_folder_without_val_carves_it_and_says_so(tmp_path) -> None:
    root = write_image_folder(tmp_path / "pics", counts={"train": 10, "test": 2})
    ds = data(folder=root, seed=3)
    assert (len(ds.train), len(ds.val)) == (27, 3)
    assert len(ds.notes) == 1 and "no val split" in ds.notes[0] and "seed 3" in ds.notes[0]
    # disjoint: no train image appears in val
    train = {tuple(x.flatten()[:6].tolist()) for x in ds.train.x}
    assert not train & {tuple(x.flatten()[:6].tolist()) for x in ds.val.x}
    again = data(folder=root, seed=3)
    assert torch.equal(again.val.x, ds.val.x)
    small = data(folder=root, seed=3, train_size=5, val_size=4, test_size=3)
    assert (len(small.train), len(small.val), len(small.test)) == (5, 4, 3)


def test_npz_tabular_with_and_without_val(tmp_path) -> None:
    ds = data(npz=write_npz(tmp_path / "t.npz"))
    assert ds.input_shape == (5,) and ds.num_classes == 3 and ds.class_names == ("0", "1", "2")
    assert (len(ds.train), len(ds.val), len(ds.test)) == (60, 20, 20)
    assert ds.train.x.dtype == torch.float32 and ds.train.y.dtype == torch.int64
    named = data(npz=write_npz(tmp_path / "n.npz", class_names=np.array(["x", "y", "z", "w"])))
    assert named.class_names == ("x", "y", "z", "w") and named.num_classes == 4
    carved = data(npz=write_npz(tmp_path / "v.npz", val=False), train_size=40)
    assert (len(carved.train), len(carved.val)) == (40, 6) and "no val split" in carved.notes[0]
    images = data(npz=write_npz(tmp_path / "i.npz", x_train=np.zeros((60, 2, 4, 4), np.uint8),
                                x_val=np.ones((20, 2, 4, 4)), x_test=np.ones((20, 2, 4, 4))))
    assert images.input_shape == (2, 4, 4)
    subset = data(npz=tmp_path / "t.npz", train_size=10, seed=1)
    assert len(subset.train) == 10 and torch.equal(
        subset.train.x, data(npz=tmp_path / "t.npz", train_size=10, seed=1).train.x)


def test_import_mapping_tuple_and_classes(tmp_path, monkeypatch) -> None:
    monkeypatch.syspath_prepend(str(tmp_path))
    mod = write_data_module(tmp_path, "user_data_ok")
    ds = data(**{"import": f"{mod}:splits"})
    assert ds.input_shape == (2, 6, 6) and ds.class_names == ("a", "b", "c")
    assert (len(ds.train), len(ds.val), len(ds.test)) == (30, 9, 12)
    carved = data(**{"import": f"{mod}:no_val", "val_size": 5})
    assert (len(carved.train), len(carved.val)) == (25, 5) and carved.notes
    flat = data(**{"import": f"{mod}:tensors", "test_size": 4})
    assert flat.input_shape == (4,) and flat.num_classes == 2 and len(flat.test) == 4


def test_spec_one_source_and_paths_relative_to_the_spec(tmp_path) -> None:
    for bad, fragment in [({"dataset": "synthetic", "npz": "a.npz"}, "exactly one of"),
                          ({}, "exactly one of"), ({"npz": "a.npz", "size": 8},
                                                   "options of 'folder'"),
                          ({"folder": "d", "mean": [0.1, 0.2]}, "one per channel"),
                          ({"folder": "d", "channels": 2}, "channels")]:
        with pytest.raises(SpecError, match=fragment):
            parse_spec({**tiny_job(tmp_path), "data": bad})
    (tmp_path / "jobs").mkdir()
    spec_file = tmp_path / "jobs" / "job.yaml"
    spec_file.write_text(yaml.safe_dump({**tiny_job(tmp_path), "data": {"npz": "../t.npz"}}))
    spec = load_spec(spec_file)
    assert spec.data.npz == (tmp_path / "t.npz").resolve()
    assert spec.data.describe() == f"npz:{spec.data.npz}"
    builtin = parse_spec(tiny_job(tmp_path))
    assert builtin.data.describe() == "synthetic" and "npz" not in builtin.to_yaml()


def test_baseline_key_follows_the_data_content(tmp_path) -> None:
    spec = parse_spec({**tiny_job(tmp_path), "data": {"npz": str(tmp_path / "t.npz")}})
    first = data(npz=write_npz(tmp_path / "t.npz"))
    key = baseline_key(spec, first)
    assert baseline_key(spec, data(npz=tmp_path / "t.npz")) == key
    write_npz(tmp_path / "t.npz", y_train=np.roll(first.train.y.numpy(), 1))
    assert baseline_key(spec, data(npz=tmp_path / "t.npz")) != key


def mlp(num_classes: int, in_channels: int) -> torch.nn.Module:
    """A tabular model: ``in_channels`` is the number of features."""
    return torch.nn.Sequential(torch.nn.Linear(in_channels, 16), torch.nn.ReLU(),
                               torch.nn.Linear(16, num_classes))


def two_logits(in_channels: int) -> torch.nn.Module:
    """A model that ignores num_classes: refused on data with more classes."""
    return mlp(2, in_channels)


def test_validate_on_each_source(tmp_path, monkeypatch, capsys) -> None:
    monkeypatch.syspath_prepend(str(tmp_path))
    mod = write_data_module(tmp_path, "user_data_cli")
    write_image_folder(tmp_path / "pics", counts={"train": 4, "test": 2})
    write_npz(tmp_path / "t.npz")
    cases = [({"folder": "pics"}, {"arch": "tiny_resnet"}, "folder:",
              "(11/1/6 train/val/test, 3 classes, input 3x8x8)"),
             ({"npz": "t.npz"}, {"import": "tests.test_userdata:mlp"}, "npz:",
              "(60/20/20 train/val/test, 3 classes, input 5)"),
             ({"import": f"{mod}:splits"}, {"arch": "tiny_resnet"}, "import:",
              "(30/9/12 train/val/test, 3 classes, input 2x6x6)")]
    for source, model, described, counts in cases:
        job = {**tiny_job(tmp_path), "data": source, "model": model}
        (tmp_path / "job.yaml").write_text(yaml.safe_dump(job))
        assert main(["validate", str(tmp_path / "job.yaml")]) == 0
        out, err = capsys.readouterr()
        assert out.startswith("ok: ") and described in out and counts in out, out
        assert ("no val split" in err) == (source.get("folder") == "pics"), err


def test_data_errors_are_one_line(tmp_path) -> None:
    write_image_folder(tmp_path / "pics", classes=("a", "b"), counts={"train": 2, "test": 1})
    with pytest.raises(DataError, match="fewer than train 9 \\+ val 1") as info:
        data(folder=tmp_path / "pics", train_size=9)
    assert "\n" not in str(info.value)


def test_baseline_keys_of_builtin_jobs_unchanged() -> None:
    """The new data and model keys, unset, leave the cache key of a job as it was (the
    value computed before they existed), so cached baselines are still found."""
    spec = parse_spec({"name": "k", "model": {"import": "torch.nn:Identity"},
                       "data": {"dataset": "digits", "train_size": 100},
                       "budget": {"latency_fraction": 0.5}})
    assert baseline_key(spec) == "f7a6c98707d728ff"


@pytest.mark.slow
def test_folder_data_and_a_dict_model_end_to_end(tmp_path, capsys) -> None:
    """A user's image folder and a model returning a dict, through Ray trials, int8
    ONNX export, ``slimtune export`` and reload."""
    from slimtune.models import LogitsOf
    from slimtune.results.outputs import load_compressed

    write_image_folder(tmp_path / "pics", size=(12, 12), counts={"train": 30, "test": 8})
    job = {**tiny_job(tmp_path), "data": {"folder": "pics"}, "evaluate": ["per_class"],
           "model": {"import": "tests.test_model_outputs:dict_net"},
           "search": {"searcher": "random", "trials": 2, "seed": 0, "evaluator": "finetune"}}
    (tmp_path / "job.yaml").write_text(yaml.safe_dump(job))
    assert main(["run", str(tmp_path / "job.yaml"), "--out", str(tmp_path / "out")]) == 0
    out, err = capsys.readouterr()
    assert "no val split" in err and "takes 'logits'" in err and "Pareto front" in out
    assert main(["export", str(tmp_path / "out"), "--out", str(tmp_path / "exp")]) == 0
    model = load_compressed(tmp_path / "exp" / "model.pt")
    assert isinstance(model, LogitsOf) and model(torch.randn(2, 3, 12, 12)).shape == (2, 3)
