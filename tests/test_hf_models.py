"""Hugging Face ``transformers`` vision models as users hand them over: built from tiny
configs (no weights, tests/hf_models.py), wrapped for their ``ModelOutput``, tabulated,
pruned (whole heads in attention) and run through ONNX Runtime."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

from slimtune.data import FASHION_MNIST_DIR
from slimtune.export import export_onnx, onnx_predict, onnx_session
from slimtune.layers import build_layer_table
from slimtune.methods.apply import apply_policy, prune_structure
from slimtune.models import LogitsOf, output_note
from slimtune.models.logits import adapt_output
from slimtune.policy import Policy

pytest.importorskip("transformers")

from tests import hf_models  # noqa: E402 - needs transformers

SHAPE = (1, 28, 28)
ATTENTION = {"vit": 2, "mobilevit": 9}  # attention groups each family has


def adapted(family: str) -> nn.Module:
    """The family's model as slimtune builds it, its weights re-drawn with torch's default
    init: HF's small init (std 0.02) gives logits near 0, which would compare as equal."""
    model = hf_models.FAMILIES[family]()
    torch.manual_seed(0)
    for m in model.modules():
        if hasattr(m, "reset_parameters") and m is not model:
            m.reset_parameters()
    return adapt_output(model, torch.randn(2, *SHAPE)).eval()


@pytest.mark.parametrize("family", sorted(hf_models.FAMILIES))
def test_forward_is_adapted_to_logits(family: str) -> None:
    model = adapted(family)
    assert isinstance(model, LogitsOf) and model.key == "logits"
    assert "ImageClassifierOutput" in (output_note(model) or "")
    with torch.no_grad():
        assert model(torch.randn(3, *SHAPE)).shape == (3, 10)


@pytest.mark.parametrize("family", sorted(hf_models.FAMILIES))
def test_uniformly_pruned_model_exports_and_matches_in_onnx_runtime(family: str,
                                                                    tmp_path) -> None:
    model = adapted(family)
    table = build_layer_table(model, SHAPE)
    assert table.groups
    heads = [g for g in table.groups if g.attention]
    assert len(heads) == ATTENTION.get(family, 0)
    policy = Policy(prune={g.name: 0.5 for g in table.groups})
    pruned = apply_policy(model, table, policy).eval()
    assert sum(p.numel() for p in pruned.parameters()) < table.params
    x = torch.randn(4, *SHAPE)
    with torch.no_grad():
        expected = pruned(x).numpy()
    path = export_onnx(pruned, SHAPE, tmp_path / "model.onnx")
    got = onnx_predict(onnx_session(path, threads=1), x)
    scale = float(np.abs(expected).max())
    assert scale > 1e-3
    np.testing.assert_allclose(got, expected, rtol=1e-3, atol=1e-4 * scale)


# family -> (attention module holding the heads, its q/k/v layers, the output projection),
# relative to the model's first attention block
_HEAD_LAYOUT = {
    "vit": ("model.vit.layers.0.attention", ("q_proj", "k_proj", "v_proj"),
            "model.vit.layers.0.attention.o_proj"),
    "mobilevit": ("model.mobilevit.encoder.layer.2.transformer.layer.0.attention.attention",
                  ("query", "key", "value"),
                  "model.mobilevit.encoder.layer.2.transformer.layer.0.attention.output.dense"),
}


@pytest.mark.parametrize("family", sorted(_HEAD_LAYOUT))
def test_attention_groups_are_whole_heads_under_hf_names(family: str) -> None:
    """HF names heads ``num_attention_heads`` (+ ``head_dim`` / ``attention_head_size``):
    every q/k/v group is recognised as heads, and pruning a ratio of each removes whole
    heads, lowering the module's head count (and ``all_head_size``) so forward runs."""
    model = adapted(family)
    table = build_layer_table(model, SHAPE)
    modules = dict(model.named_modules())
    for group in (g for g in table.groups if g.attention):
        attn = modules[group.attention]
        assert group.head_dim * attn.num_attention_heads == group.channels
        assert len(group.layers) == 3  # q, k and v together
        pruned = prune_structure(model, table, Policy(prune={group.name: 0.3}))
        after = dict(pruned.named_modules())[group.attention]
        kept = after.num_attention_heads
        assert 0 < kept < attn.num_attention_heads
        for name in group.layers:
            assert dict(pruned.named_modules())[name].out_features == kept * group.head_dim
        if hasattr(after, "all_head_size"):
            assert after.all_head_size == kept * group.head_dim
        with torch.no_grad():
            assert pruned(torch.randn(2, *SHAPE)).shape == (2, 10)


@pytest.mark.parametrize("family", sorted(_HEAD_LAYOUT))
def test_removing_a_dead_head_leaves_the_output_unchanged(family: str) -> None:
    """A head whose q/k/v rows and output columns are zero contributes nothing; pruning one
    head must remove exactly that one (q, k, v rows and the projection's columns alike), so
    the pruned model computes the same function."""
    model = adapted(family)
    parent, qkv, out = _HEAD_LAYOUT[family]
    modules = dict(model.named_modules())
    heads = modules[parent].num_attention_heads
    table = build_layer_table(model, SHAPE)
    group = next(g for g in table.groups if g.attention == parent)
    d = group.head_dim
    with torch.no_grad():
        for name in qkv:
            layer = modules[f"{parent}.{name}"]
            layer.weight[d:2 * d] = 0
            if layer.bias is not None:
                layer.bias[d:2 * d] = 0
        modules[out].weight[:, d:2 * d] = 0
    pruned = prune_structure(model, table, Policy(prune={group.name: 1 / heads}))
    assert dict(pruned.named_modules())[parent].num_attention_heads == heads - 1
    x = torch.randn(3, *SHAPE)
    with torch.no_grad():
        torch.testing.assert_close(pruned(x), model(x), rtol=1e-4, atol=1e-5)


def test_a_from_config_init_that_silences_the_model_is_named() -> None:
    """transformers 5.24 builds EfficientNet/MobileViT with BatchNorm scales ~N(0, 0.02):
    such a model cannot train, and the chance-level refusal says why."""
    from slimtune.chance import vanishing_norms

    as_built = hf_models.efficientnet_as_built()
    assert "norm layers' scales are near 0" in vanishing_norms(as_built)
    assert vanishing_norms(hf_models.efficientnet()) == ""
    assert vanishing_norms(hf_models.resnet()) == ""
    with torch.no_grad():
        assert float(as_built(torch.randn(4, *SHAPE)).logits.std()) < 1e-6


@pytest.mark.slow
@pytest.mark.parametrize("family", ["vit", "resnet"])
def test_run_export_and_onnx_runtime_end_to_end(family: str, tmp_path, capsys) -> None:
    """``slimtune run`` (uniform searcher, 2 trials, a 2,000-image Fashion-MNIST subset) on
    an HF ViT and an HF ResNet handed over as they are, then ``slimtune export`` and the
    exported ONNX file in ONNX Runtime against the exported torch model."""
    import json

    import yaml

    from slimtune.cli import main
    from slimtune.data import load_dataset
    from slimtune.results.outputs import load_compressed
    from tests.jobs import tiny_job

    if not (FASHION_MNIST_DIR / "train-images-idx3-ubyte.gz").is_file():
        pytest.skip("Fashion-MNIST is not installed (dataset-fashion-mnist)")
    job = tiny_job(tmp_path, model={"import": f"tests.hf_models:{family}"}, evaluate=[],
                   data={"dataset": "fashion-mnist", "train_size": 2000, "val_size": 500,
                         "test_size": 200},
                   baseline={"epochs": 2, "batch_size": 64},
                   search={"searcher": "uniform", "trials": 2, "seed": 0,
                           "evaluator": "finetune"})
    (tmp_path / "job.yaml").write_text(yaml.safe_dump(job))
    assert main(["validate", str(tmp_path / "job.yaml")]) == 0
    assert main(["run", str(tmp_path / "job.yaml"), "--out", str(tmp_path / "out")]) == 0
    out = capsys.readouterr().out
    assert "Pareto front" in out
    rows = [json.loads(line) for line in (tmp_path / "out" / "trials.jsonl").open()]
    assert len(rows) == 2 and all(r["state"] != "failed" for r in rows), rows
    assert main(["export", str(tmp_path / "out"), "--out", str(tmp_path / "exp")]) == 0
    model = load_compressed(tmp_path / "exp" / "model.pt").eval()
    x = load_dataset("fashion-mnist", train_size=100, val_size=100, test_size=64,
                     seed=0).test.x
    with torch.no_grad():
        expected = model(x).numpy()
    got = onnx_predict(onnx_session(tmp_path / "exp" / "model.onnx", threads=1), x)
    policy = json.loads((tmp_path / "exp" / "policy.json").read_text())
    if not any(b == 8 for b in policy.get("bits", {}).values()):  # int8 files differ a bit
        np.testing.assert_allclose(got, expected, rtol=1e-3, atol=1e-4)
    assert (got.argmax(1) == expected.argmax(1)).mean() >= 0.75
