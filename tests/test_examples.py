"""The README's second datasets: Fashion-MNIST as a 32x32 RGB PNG ImageFolder, the wine
data as an npz with a user's MLP, and a user's Dataset class by import."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
import yaml

from slimtune.cli import main
from slimtune.data import fashion_mnist_dir
from slimtune.results.outputs import read_trials

EXAMPLES = Path(__file__).resolve().parents[1] / "examples"

pytestmark = pytest.mark.skipif(not (fashion_mnist_dir() / "t10k-images-idx3-ubyte.gz").is_file(),
                                reason="Fashion-MNIST not installed (make data)")


def _spec(tmp_path: Path, name: str, **changes) -> Path:
    spec = yaml.safe_load((EXAMPLES / f"{name}.yaml").read_text())
    spec["tracking"] = {"uri": f"sqlite:///{tmp_path / 'mlruns.db'}", "experiment": "examples"}
    for key, value in changes.items():
        spec[key] = {**spec.get(key, {}), **value}
    path = tmp_path / f"{name}.yaml"
    path.write_text(yaml.safe_dump(spec))
    return path


def test_the_folder_is_rgb_32x32_pngs_of_every_class(tmp_path):
    from PIL import Image

    from examples.fashion_folder import write_folder

    out = write_folder(tmp_path / "fashion-folder", per_class=3)
    classes = sorted(p.name for p in (out / "train").iterdir())
    assert len(classes) == 10 and classes == sorted(p.name for p in (out / "test").iterdir())
    pngs = sorted(out.rglob("*.png"))
    assert len(pngs) == 2 * 10 * 3
    with Image.open(pngs[0]) as image:
        assert image.size == (32, 32) and image.mode == "RGB"


@pytest.mark.parametrize("name", ["folder", "wine", "import"])
def test_each_example_spec_validates(tmp_path, capsys, name):
    if name == "folder":
        from examples.fashion_folder import write_folder

        write_folder(tmp_path / "fashion-folder", per_class=6)
    if name == "wine":
        from examples.wine import write_npz

        write_npz(tmp_path / "wine.npz")
    assert main(["validate", str(_spec(tmp_path, name))]) == 0
    said = capsys.readouterr()
    expected = {"folder": "input 3x32x32", "wine": "3 classes, input 13",
                "import": "input 1x28x28"}[name]
    assert said.out.startswith("ok:") and expected in said.out
    if name != "wine":  # no val split given: carved from train, and said
        assert "carved out as val" in said.err


@pytest.mark.slow
def test_the_wine_mlp_is_searched_end_to_end(tmp_path, capsys):
    from examples.wine import write_npz

    write_npz(tmp_path / "wine.npz")
    spec = _spec(tmp_path, "wine", search={"candidates": 12, "trials": 2},
                 finalize={"epochs": 5}, baseline={"epochs": 10})
    out = tmp_path / "run"
    assert main(["run", str(spec), "--out", str(out)]) == 0
    rows = read_trials(out)
    assert any(r.stage == "final" and r.test_accuracy is not None for r in rows)
    assert (out / "best" / "model.onnx").is_file()
    shutil.rmtree(out / "trials", ignore_errors=True)
