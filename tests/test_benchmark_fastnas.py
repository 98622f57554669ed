"""benchmarks/search_quality.py --fastnas where nvidia-modelopt does not import: one line,
exit 2, before any job; without the flag the script never imports modelopt."""

from __future__ import annotations

import importlib
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
