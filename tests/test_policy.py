from __future__ import annotations

import pytest

from slimtune.policy import Policy


def test_json_round_trip(tmp_path):
    p = Policy(prune={"b": 0.5, "a": 0.25}, bits={"fc": 8, "conv1": 4}, model_signature="abc")
    assert Policy.from_json(p.to_json()) == p
    p.save(tmp_path / "p.json")
    assert Policy.load(tmp_path / "p.json") == p
    assert list(p.prune) == ["a", "b"]  # canonical order
    assert p.key() == Policy(prune={"a": 0.25, "b": 0.5}, bits={"conv1": 4, "fc": 8}).key()


def test_defaults_and_queries():
    p = Policy(prune={"g": 0.5}, bits={"l": 8})
    assert p.ratio("g") == 0.5 and p.ratio("other") == 0.0
    assert p.bits_of("l") == 8 and p.bits_of("other") == 32
    assert p.quantized_layers == ["l"]


@pytest.mark.parametrize("kwargs", [{"prune": {"g": 1.0}}, {"prune": {"g": -0.1}},
                                    {"bits": {"l": 3}}])
def test_invalid_values(kwargs):
    with pytest.raises(ValueError):
        Policy(**kwargs)


def test_unknown_keys_rejected():
    with pytest.raises(ValueError, match="unknown policy keys"):
        Policy.from_dict({"prune": {}, "ratios": {}})


def test_atomic_writes_get_the_usual_file_mode(tmp_path):
    import os
    import stat

    from slimtune.policy import write_text_atomic

    old = os.umask(0o022)
    try:
        write_text_atomic(tmp_path / "out" / "policy.json", "{}\n")
    finally:
        os.umask(old)
    mode = stat.S_IMODE((tmp_path / "out" / "policy.json").stat().st_mode)
    assert mode == 0o644 and not list((tmp_path / "out").glob(".policy.json.*"))
