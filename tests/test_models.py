"""Built-in architectures, user models from ``module:callable``, and weight loading."""

from __future__ import annotations

import sys
import textwrap
from pathlib import Path

import pytest
import torch
import torch_pruning as tp
from torch import nn

from slimtune.errors import UserInputError
from slimtune.models import (
    BUILTIN_ARCHS,
    ModelError,
    build_builtin,
    import_model,
    load_weights,
)

# Parameter counts (10 classes, 1 input channel) as (low, high).
PARAM_RANGES = {
    "resnet20": (0.26e6, 0.28e6),
    "resnet32": (0.45e6, 0.48e6),
    "resnet56": (0.84e6, 0.87e6),
    "vgg_small": (0.2e6, 0.35e6),
    "mobilenetv2_small": (0.1e6, 0.3e6),
    "lenet300": (266_610, 266_610),  # 784-300-100-10
    "lenet5": (431_080, 431_080),  # Caffe LeNet-5
    "tiny_resnet": (1e3, 10e3),
    "tiny_concat": (1e3, 10e3),
}


def n_params(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def test_registry_lists_every_arch() -> None:
    assert set(BUILTIN_ARCHS) == set(PARAM_RANGES)


@pytest.mark.parametrize("arch", sorted(PARAM_RANGES))
def test_builtin_forward_and_size(arch: str) -> None:
    model = build_builtin(arch, num_classes=10, in_channels=1).eval()
    with torch.no_grad():
        out = model(torch.randn(2, 1, 28, 28))
    assert out.shape == (2, 10)
    low, high = PARAM_RANGES[arch]
    assert low <= n_params(model) <= high


@pytest.mark.parametrize("arch", ["tiny_resnet", "tiny_concat", "vgg_small"])
@pytest.mark.parametrize("size", [8, 16])
def test_small_inputs_work(arch: str, size: int) -> None:
    model = build_builtin(arch, num_classes=7, in_channels=3).eval()
    with torch.no_grad():
        assert model(torch.randn(2, 3, size, size)).shape == (2, 7)


def test_builder_defaults() -> None:
    for builder in BUILTIN_ARCHS.values():
        model = builder()
        first = next(m for m in model.modules() if isinstance(m, (nn.Conv2d, nn.Linear)))
        assert (first.in_channels if isinstance(first, nn.Conv2d) else first.in_features) in (
            1, 28 * 28)  # a conv on one channel, or an MLP on one 28x28 channel
        assert [m for m in model.modules() if isinstance(m, nn.Linear)][-1].out_features == 10


def test_unknown_arch_lists_valid_names() -> None:
    with pytest.raises(ModelError, match="unknown model arch 'resnet18'.*resnet20.*tiny_concat"):
        build_builtin("resnet18", 10, 1)


def test_model_error_is_a_user_input_error() -> None:
    assert issubclass(ModelError, UserInputError)
    assert issubclass(ModelError, ValueError)


def test_tiny_resnet_residual_couples_channels() -> None:
    """Pruning the stem must also prune the block its output is added to."""
    model = build_builtin("tiny_resnet", 10, 1)
    graph = tp.DependencyGraph().build_dependency(model, example_inputs=torch.randn(1, 1, 16, 16))
    graph.get_pruning_group(model.conv1, tp.prune_conv_out_channels, idxs=[0, 1]).prune()
    assert model.layer1.conv2.out_channels == 6
    assert model.layer2.downsample[0].in_channels == 6
    assert model(torch.randn(2, 1, 16, 16)).shape == (2, 10)


def test_tiny_concat_prunes_through_cat() -> None:
    model = build_builtin("tiny_concat", 10, 1)
    graph = tp.DependencyGraph().build_dependency(model, example_inputs=torch.randn(1, 1, 16, 16))
    graph.get_pruning_group(model.branch1[0], tp.prune_conv_out_channels, idxs=[0, 1, 2]).prune()
    assert model.conv[0].in_channels == 13
    assert model(torch.randn(2, 1, 16, 16)).shape == (2, 10)


USER_MODULE = textwrap.dedent(
    """
    from torch import nn

    def small_net(num_classes=10, in_channels=1):
        return nn.Sequential(
            nn.Conv2d(in_channels, 4, 3), nn.AdaptiveAvgPool2d(1), nn.Flatten(),
            nn.Linear(4, num_classes),
        )

    def no_args():
        return nn.Linear(3, 2)

    def classes_only(num_classes):
        return nn.Linear(3, num_classes)

    def takes_kwargs(**kwargs):
        return nn.Linear(kwargs["in_channels"], kwargs["num_classes"])

    class Nets:
        make = staticmethod(no_args)

    def not_a_module(num_classes=10, in_channels=1):
        return 42

    def raises():
        raise RuntimeError("boom\\nsecond line")

    NOT_CALLABLE = 3
    """
)


@pytest.fixture
def user_modules(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Put ``user_nets`` and ``broken_nets`` (which fails to import) on sys.path."""
    (tmp_path / "user_nets.py").write_text(USER_MODULE)
    (tmp_path / "broken_nets.py").write_text("import slimtune_no_such_dependency\n")
    monkeypatch.syspath_prepend(tmp_path)
    for name in ("user_nets", "broken_nets"):
        monkeypatch.delitem(sys.modules, name, raising=False)


@pytest.mark.usefixtures("user_modules")
def test_import_model_passes_accepted_kwargs() -> None:
    model = import_model("user_nets:small_net", num_classes=5, in_channels=3)
    assert model(torch.randn(2, 3, 8, 8)).shape == (2, 5)
    assert import_model("user_nets:no_args", 5, 3).out_features == 2
    assert import_model("user_nets:classes_only", 5, 3).out_features == 5
    kwargs_model = import_model("user_nets:takes_kwargs", 5, 3)
    assert (kwargs_model.in_features, kwargs_model.out_features) == (3, 5)
    assert isinstance(import_model("user_nets:Nets.make", 5, 3), nn.Linear)
    assert isinstance(import_model("torch.nn:Identity", 5, 3), nn.Identity)


@pytest.mark.usefixtures("user_modules")
@pytest.mark.parametrize(
    ("target", "pattern"),
    [
        ("user_nets.small_net", "not of the form 'package.module:callable'"),
        ("user_nets:small_net:x", "not of the form"),
        (":small_net", "not of the form"),
        ("user_nets:", "not of the form"),
        ("user_nets:1net", "not of the form"),
        (
            "slimtune_no_such_pkg.nets:net",
            "cannot import module 'slimtune_no_such_pkg.nets'.*"
            "No module named 'slimtune_no_such_pkg'.*PYTHONPATH",
        ),
        ("broken_nets:net", "cannot import module 'broken_nets'.*slimtune_no_such_dependency"),
        ("user_nets:missing", "module 'user_nets' has no attribute 'missing'"),
        ("user_nets:NOT_CALLABLE", "'user_nets:NOT_CALLABLE' is not callable"),
        ("user_nets:not_a_module", "returned int, not a torch.nn.Module"),
        ("user_nets:raises", "calling 'user_nets:raises' failed: RuntimeError: boom second line"),
    ],
)
def test_import_model_errors(target: str, pattern: str) -> None:
    with pytest.raises(ModelError, match=pattern) as info:
        import_model(target, 10, 1)
    assert "\n" not in str(info.value)


def test_load_weights_round_trip(tmp_path: Path) -> None:
    source = build_builtin("tiny_resnet", 10, 1)
    torch.save(source.state_dict(), tmp_path / "plain.pt")
    torch.save({"state_dict": source.state_dict(), "epoch": 3}, tmp_path / "ckpt.pt")
    for name in ("plain.pt", "ckpt.pt"):
        target = build_builtin("tiny_resnet", 10, 1)
        load_weights(target, tmp_path / name)
        for key, value in source.state_dict().items():
            assert torch.equal(target.state_dict()[key], value)


def load_error(model: nn.Module, path: Path) -> str:
    with pytest.raises(ModelError) as info:
        load_weights(model, path)
    message = str(info.value)
    assert "\n" not in message
    return message


def test_load_weights_shape_mismatch(tmp_path: Path) -> None:
    torch.save(build_builtin("tiny_resnet", 5, 1).state_dict(), tmp_path / "w.pt")
    message = load_error(build_builtin("tiny_resnet", 10, 1), tmp_path / "w.pt")
    assert message == (
        "weights do not fit model: fc.weight has shape [5, 16] in the file, [10, 16] in the model"
    )


def test_load_weights_key_mismatch(tmp_path: Path) -> None:
    state = build_builtin("tiny_resnet", 10, 1).state_dict()
    state["extra.weight"] = torch.zeros(1)
    del state["fc.bias"], state["fc.weight"]
    torch.save(state, tmp_path / "w.pt")
    message = load_error(build_builtin("tiny_resnet", 10, 1), tmp_path / "w.pt")
    assert message.startswith("weights do not fit model: 2 keys missing from the file")
    assert "1 unexpected keys in the file (first: extra.weight)" in message


def test_load_weights_bad_files(tmp_path: Path) -> None:
    model = build_builtin("tiny_resnet", 10, 1)
    assert "not found" in load_error(model, tmp_path / "nope.pt")
    (tmp_path / "garbage.pt").write_bytes(b"not a checkpoint")
    assert "not a file written by torch.save" in load_error(model, tmp_path / "garbage.pt")
    (tmp_path / "empty.pt").write_bytes(b"")
    assert "not a file written by torch.save" in load_error(model, tmp_path / "empty.pt")
    torch.save(model, tmp_path / "module.pt")
    message = load_error(model, tmp_path / "module.pt")
    assert "TinyResNet object, which is not loaded for safety" in message
    torch.save({"weights": [1, 2]}, tmp_path / "list.pt")
    assert "holds no state dict" in load_error(model, tmp_path / "list.pt")
