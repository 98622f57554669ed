"""``slimtune load FILE [--check MODEL.pt]``: read a compressed model file back.

Verifies the file's SHA-256 and decodes every tensor (a truncated or corrupt file is one
line on stderr, exit 2, nothing loaded), then prints each tensor with its shape, the
bytes its record takes and its sparsity, and the totals. ``--check`` compares the
decoded tensors bit for bit with a trial's ``model.pt`` after the same sparsity and
weight sharing (``--sparsity``/``--clusters`` as given to ``export``): exit 0 when
equal, 1 when not.
"""

from __future__ import annotations

import argparse
from pathlib import Path

NAME = "load"
HELP = "read and verify a compressed model file (export --format compressed)"
ORDER = 31


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("file", type=Path, help="a file written by export --format compressed")
    p.add_argument("--check", type=Path, metavar="MODEL.pt",
                   help="a trial's model.pt to compare with, bit for bit")
    p.add_argument("--sparsity", type=float, help="as given to export (with --check)")
    p.add_argument("--clusters", type=int, help="as given to export (with --check)")
    p.add_argument("--quiet", action="store_true", help="totals only")


def run(args: argparse.Namespace) -> int:
    import torch

    from slimtune.compressed_file import read_compressed, stored_sizes

    state = read_compressed(args.file)
    sizes = stored_sizes(args.file)
    dense = 0
    for name, t in state.items():
        dense += t.numel() * t.element_size()
        if not args.quiet:
            zeros = float((t == 0).float().mean()) if t.is_floating_point() else 0.0
            print(f"{name:<40} {str(list(t.shape)):<18} {sizes[name]:>9} B  "
                  f"{zeros:6.1%} zero")
    total = args.file.stat().st_size
    print(f"{len(state)} tensors, {total} bytes in the file, {dense} bytes dense "
          f"({dense / total:.1f}x); checksum ok")
    if args.check is None:
        return 0
    import copy

    from slimtune.deep_compression import compress_weights, with_uniform
    from slimtune.errors import UserInputError
    from slimtune.trial_model import load_trial

    model, table, policy = load_trial(args.check)
    try:
        policy = with_uniform(policy, table, sparsity=args.sparsity, clusters=args.clusters)
    except ValueError as err:
        raise UserInputError(str(err)) from None
    expected = compress_weights(copy.deepcopy(model), table, policy).state_dict()
    differ = [k for k in expected if k not in state or state[k].dtype != expected[k].dtype
              or not torch.equal(state[k], expected[k])]
    differ += [k for k in state if k not in expected]
    if differ:
        print(f"differs from {args.check}: {len(differ)} tensors (first: {differ[0]})")
        return 1
    print(f"bit-exact with {args.check} after its sparsity and weight sharing")
    return 0
