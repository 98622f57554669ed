"""benchmarks/search_quality.py --fastnas where nvidia-modelopt does not import: one line,
exit 2, before any job; without the flag the script never imports modelopt and its rows
have no ``fastnas`` entry (jobs and FastNAS stubbed: these tests need neither)."""

from __future__ import annotations

import importlib
import json
import sys
from pathlib import Path

import pytest

BENCHMARKS = Path(__file__).resolve().parents[1] / "benchmarks"


@pytest.fixture
def no_modelopt(monkeypatch):
    """search_quality imported as the script imports it, with modelopt unimportable."""
    monkeypatch.syspath_prepend(str(BENCHMARKS))
    monkeypatch.setitem(sys.modules, "modelopt", None)  # import modelopt: ImportError
    for name in ("fastnas", "search_quality"):
        monkeypatch.delitem(sys.modules, name, raising=False)
    return importlib.import_module("search_quality")


def test_fastnas_flag_without_modelopt_is_one_line_and_exit_2(no_modelopt, tmp_path,
                                                               monkeypatch, capsys):
    out = tmp_path / "bench"
    monkeypatch.setattr(sys, "argv", ["search_quality.py", "compare", "--fastnas",
                                      "--out", str(out)])
    with pytest.raises(SystemExit) as exit_:
        no_modelopt.main()
    assert exit_.value.code == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "nvidia-modelopt" in err and "benchmarks/README.md" in err
    assert not out.exists()  # refused before anything is written


def test_without_the_flag_compare_runs_without_modelopt(no_modelopt, tmp_path, monkeypatch):
    seen = []
    monkeypatch.setattr(no_modelopt, "compare", seen.append)
    monkeypatch.setattr(sys, "argv", ["search_quality.py", "compare", "--out",
                                      str(tmp_path / "bench")])
    no_modelopt.main()
    assert len(seen) == 1 and seen[0].fastnas is False


@pytest.mark.parametrize("flag", [False, True])
def test_compare_rows_have_a_fastnas_entry_only_with_the_flag(no_modelopt, tmp_path,
                                                             monkeypatch, capsys, flag):
    calls = []
    outcome = object()
    monkeypatch.setattr(no_modelopt, "run_job", lambda spec, out, overwrite: outcome)
    monkeypatch.setattr(no_modelopt, "_summarise", lambda o, **f: {
        "job": f["name"], "search": None, "int8": None, "uniform": None,
        "wall_seconds": 1.0})

    def fastnas_row(spec, got, *, probes, say):
        calls.append((spec.budget.latency_fraction, got, probes))
        return {"val": 0.5, "test": 0.25}

    monkeypatch.setattr(no_modelopt, "fastnas_row", fastnas_row)
    out = tmp_path / "bench"
    argv = ["search_quality.py", "compare", "--fractions", "0.4", "--out", str(out),
            "--side-by-side-rounds", "0"]  # the stubbed job wrote no models to time
    monkeypatch.setattr(sys, "argv", argv + (["--fastnas", "--fastnas-probes", "3"]
                                             if flag else []))
    if flag:  # the flag's check passes: modelopt "installed"
        monkeypatch.setattr(no_modelopt, "missing", lambda: None)
    no_modelopt.main()
    rows = json.loads((out / "compare.json").read_text())
    assert calls == ([(0.4, outcome, 3)] if flag else [])
    assert ("fastnas" in rows[0]) is flag
    table = capsys.readouterr().out
    assert ("fastnas val/test" in table) is flag and ("0.5000/0.2500" in table) is flag


@pytest.mark.parametrize("jobs, says", [([], "fastnas needs --jobs"),
                                        (["nowhere"], "not a finished job")])
def test_fastnas_mode_refuses_what_is_not_a_finished_job(no_modelopt, tmp_path, monkeypatch,
                                                          capsys, jobs, says):
    out = tmp_path / "bench"
    argv = ["search_quality.py", "fastnas", "--out", str(out)]
    if jobs:
        argv += ["--jobs", *(str(tmp_path / j) for j in jobs)]
    monkeypatch.setattr(sys, "argv", argv)
    with pytest.raises(SystemExit) as exit_:
        no_modelopt.main()
    assert exit_.value.code == 2
    assert says in capsys.readouterr().err
    assert not out.exists()  # refused before anything is written


def test_side_by_side_times_every_file_each_round_and_pairs_the_ratios(tmp_path,
                                                                       monkeypatch):
    from torch import nn

    from slimtune.export import export_onnx

    monkeypatch.syspath_prepend(str(BENCHMARKS))
    finished = importlib.import_module("finished")
    small = nn.Sequential(nn.Flatten(), nn.Linear(64, 10))
    large = nn.Sequential(nn.Flatten(), nn.Linear(64, 512), nn.ReLU(), nn.Linear(512, 10))
    paths = {}
    for name, model in (("baseline", large), ("small", small)):
        paths[name] = tmp_path / f"{name}.onnx"
        export_onnx(model.eval(), (1, 8, 8), paths[name])
    assert finished.onnx_input_shape(paths["small"]) == (1, 8, 8)
    got = finished.side_by_side(paths, 3, 1, 16, (1, 8, 8))
    assert got["rounds"] == 3 and set(got["median_ms"]) == set(got["ratio"]) == set(paths)
    assert got["ratio"]["baseline"] == 1.0
    assert all(v > 0 for v in got["median_ms"].values())
