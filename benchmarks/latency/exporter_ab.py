"""Is the fast exporter's graph the dynamo exporter's graph? Per model, both ways.

`slimtune.export.export_onnx` tries the TorchScript tracer first and keeps its graph only
when it is a static one whose conv/linear layers all keep their weight names; otherwise it
uses the torch.export ("dynamo") exporter. For every built-in architecture, the zoo and the
Hugging Face test models (untrained weights: latency does not depend on them), this exports
the model with `export_onnx` and with the dynamo exporter alone and reports: which exporter
`export_onnx` kept, the export times, whether the two graphs have the same ops in the same
counts, the largest logit difference to torch at batch 64, and the ONNX Runtime latency of
the kept graph over the dynamo one, fp32 and all-int8 (2 threads, batch 64; the two files
interleaved round by round, median of the rounds' ratios). Writes a JSON file.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
import warnings
from collections import Counter
from pathlib import Path

import numpy as np
import onnx
import torch
from common import conditions, write_result
from torch import nn

from slimtune.export import (
    INPUT_NAME,
    OUTPUT_NAME,
    _export_dynamo,
    _quiet,
    export_onnx,
    exporter_of,
    onnx_predict,
    onnx_session,
    quantize_onnx,
)
from slimtune.models import BUILTIN_ARCHS, LogitsOf, zoo

SHAPE = (1, 28, 28)
ZOO = ("densenet_tiny", "mobilenet_se", "resnext_tiny", "shufflenet_tiny", "vit_tiny", "mlp")
HF = ("resnet", "mobilenet_v2", "vit", "efficientnet", "mobilevit", "convnext")


def models() -> dict[str, nn.Module]:
    out = {name: build(num_classes=10, in_channels=1) for name, build in BUILTIN_ARCHS.items()}
    out.update({name: getattr(zoo, name)(num_classes=10, in_channels=1) for name in ZOO})
    sys.path.insert(0, str(Path(__file__).resolve().parents[2]))
    try:
        from tests import hf_models
    except ImportError:  # transformers absent: the built-in and zoo models only
        return out
    out.update({f"hf_{name}": LogitsOf(getattr(hf_models, name)(num_classes=10, in_channels=1),
                                       "logits")
                for name in HF})
    return out


def ratio(a: Path, b: Path, x: np.ndarray, rounds: int, calls: int) -> float:
    """Median over interleaved rounds of (time of `a`) / (time of `b`)."""
    sessions = [onnx_session(a, threads=2), onnx_session(b, threads=2)]
    for s in sessions:
        for _ in range(5):
            s.run([OUTPUT_NAME], {INPUT_NAME: x})
    ratios = []
    for _ in range(rounds):
        took = []
        for s in sessions:
            t = time.perf_counter()
            for _ in range(calls):
                s.run([OUTPUT_NAME], {INPUT_NAME: x})
            took.append(time.perf_counter() - t)
        ratios.append(took[0] / took[1])
    return statistics.median(ratios)


def timed(fn, *args, **kwargs) -> float:
    t = time.perf_counter()
    fn(*args, **kwargs)
    return time.perf_counter() - t


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--models", nargs="*", help="names to run (default: all)")
    ap.add_argument("--rounds", type=int, default=9)
    ap.add_argument("--calls", type=int, default=15)
    ap.add_argument("--out", type=Path)
    args = ap.parse_args()
    warnings.simplefilter("ignore")
    start = conditions()
    torch.manual_seed(0)
    x = torch.randn(64, *SHAPE)
    calibration = torch.randn(64, *SHAPE)
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for name, model in models().items():
            if args.models and name not in args.models:
                continue
            model.eval()
            with torch.no_grad():
                ref = model(x).numpy()
            fast, dyn = Path(tmp, f"{name}.onnx"), Path(tmp, f"{name}.dynamo.onnx")
            t_fast = timed(export_onnx, model, SHAPE, fast)
            with _quiet(), torch.no_grad():
                t_dyn = timed(_export_dynamo, model, x[:2], dyn, opset=18)
            graphs = [onnx.load(str(p)).graph for p in (fast, dyn)]
            kept = exporter_of(fast)
            ops = [Counter(n.op_type for n in g.node) for g in graphs]
            layers = [n for n, m in model.named_modules() if isinstance(m, (nn.Conv2d, nn.Linear))]
            q = [quantize_onnx(p, p.with_suffix(".int8.onnx"), int8_layers=layers,
                               calibration=calibration) for p in (fast, dyn)]
            row = {
                "model": name,
                "kept": kept,
                "export_s": round(t_fast, 2),
                "dynamo_export_s": round(t_dyn, 2),
                "same_ops": ops[0] == ops[1],
                "ops": sum(ops[0].values()),
                "dynamo_ops": sum(ops[1].values()),
                "max_logit_diff": float(np.abs(
                    onnx_predict(onnx_session(fast, threads=2), x) - ref).max()),
                "fp32_ratio": round(ratio(fast, dyn, x.numpy(), args.rounds, args.calls), 3),
                "int8_ratio": round(ratio(q[0], q[1], x.numpy(), args.rounds, args.calls), 3),
            }
            rows.append(row)
            print(json.dumps(row), flush=True)
    write_result("exporter_ab", {"rounds": args.rounds, "calls": args.calls, "batch": 64,
                                 "threads": 2, "rows": rows, "conditions_start": start},
                 args.out)


if __name__ == "__main__":
    main()
