"""Head counts under the names libraries give them (slimtune.heads), without transformers."""

from __future__ import annotations

from torch import nn

from slimtune.heads import head_count, head_size, remove_heads


class HFStyle(nn.Module):  # Hugging Face's older self-attention keeps all three
    def __init__(self) -> None:
        super().__init__()
        self.num_attention_heads, self.attention_head_size, self.all_head_size = 4, 8, 32


class TorchStyle(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.num_heads, self.head_dim = 4, 8


def test_heads_are_read_under_either_name() -> None:
    assert head_count(HFStyle()) == head_count(TorchStyle()) == 4
    assert head_size(HFStyle(), 32) == head_size(TorchStyle(), 32) == 8
    assert head_count(nn.Linear(2, 2)) is None and head_size(nn.Linear(2, 2), 32) is None


def test_channels_that_are_not_the_heads_are_not_taken_for_them() -> None:
    assert head_size(HFStyle(), 30) is None  # 4 heads do not divide 30
    assert head_size(HFStyle(), 64) is None  # the stored head size (8) says otherwise


def test_removing_heads_lowers_the_count_and_the_total() -> None:
    module = HFStyle()
    remove_heads(module, 1, 8)
    assert (module.num_attention_heads, module.attention_head_size,
            module.all_head_size) == (3, 8, 24)
    torch_style = TorchStyle()
    remove_heads(torch_style, 2, 8)
    assert (torch_style.num_heads, torch_style.head_dim) == (2, 8)
