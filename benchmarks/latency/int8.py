"""int8: ONNX Runtime int8 (QDQ) vs fp32 speed-up and accuracy loss on the quickstart model.

Target: >= 1.4x faster at <= 0.5 pp accuracy loss. The trained quickstart baseline
(ResNet-20, Fashion-MNIST subset; trained once, ~25 s, cached in $SLIMTUNE_CACHE) is
exported to ONNX, and every layer quantised to int8 exactly as a trial does (static QDQ,
per-channel weights, activations calibrated on 128 training images). Accuracy on the
5,000-image test split; latency at batch 64 (and 1) on 2 threads, the two models
measured round-robin (``slimtune.measurement.targets.measure_interleaved``) so load bursts hit both.
Torch: slimtune has no torch int8 path (eager int8 is not faster than fp32 on this CPU,
no VNNI), so there is nothing to compare there.
"""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

from common import conditions, quickstart, write_result

from slimtune.baseline import prepare_baseline
from slimtune.export import export_onnx, onnx_predict, onnx_session, quantize_onnx
from slimtune.measurement.latency import MeasureProtocol
from slimtune.measurement.targets import measure_interleaved
from slimtune.train import accuracy


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rounds", type=int, default=9)
    ap.add_argument("--batches", type=int, nargs="+", default=[64, 1])
    ap.add_argument("--out", type=Path)
    args = ap.parse_args()
    start = conditions()
    spec, checked = quickstart()
    data = checked.data
    baseline = prepare_baseline(spec, data)
    print(f"baseline: {baseline.source}", flush=True)
    names = [layer.name for layer in checked.table.layers]
    threads = spec.target.threads
    with tempfile.TemporaryDirectory() as tmp:
        fp32 = export_onnx(baseline.model, data.input_shape, Path(tmp) / "fp32.onnx")
        int8 = quantize_onnx(fp32, Path(tmp) / "int8.onnx", int8_layers=names,
                             calibration=data.train.first(spec.finetune.calibration_size))
        acc = {k: accuracy(
            __import__("torch").from_numpy(onnx_predict(onnx_session(p, threads=threads),
                                                        data.test)), data.test.y)
            for k, p in (("fp32", fp32), ("int8", int8))}
        rows = []
        for batch in args.batches:
            repeats = 30 if batch > 1 else 300
            proto = MeasureProtocol(warmup=10, rounds=args.rounds, repeats=repeats)
            fp, q = measure_interleaved([(fp32, data.input_shape), (int8, data.input_shape)],
                                        runtime="onnxruntime", batch_size=batch,
                                        threads=threads, protocol=proto)
            per_round = [a / b for a, b in zip(fp.round_medians_ms, q.round_medians_ms,
                                               strict=True)]
            row = {"batch": batch, "fp32_ms": fp.median_ms, "int8_ms": q.median_ms,
                   "speedup": fp.median_ms / q.median_ms,
                   "speedup_per_round": per_round,
                   "fp32_round_medians_ms": list(fp.round_medians_ms),
                   "int8_round_medians_ms": list(q.round_medians_ms)}
            rows.append(row)
            print(f"batch {batch}: fp32 {fp.median_ms:.3f} ms, int8 {q.median_ms:.3f} ms, "
                  f"speed-up {row['speedup']:.2f}x (per round {min(per_round):.2f}-"
                  f"{max(per_round):.2f})", flush=True)
    loss_pp = (acc["fp32"] - acc["int8"]) * 100
    print(f"test accuracy: fp32 {acc['fp32']:.4f}, int8 {acc['int8']:.4f} "
          f"(loss {loss_pp:.2f} pp on {len(data.test)} images)")
    main_row = rows[0]
    write_result("int8", {
        "model": "resnet20 quickstart baseline (trained)", "threads": threads,
        "test_images": len(data.test), "accuracy_fp32": acc["fp32"],
        "accuracy_int8": acc["int8"], "accuracy_loss_pp": loss_pp, "rows": rows,
        "target_met": main_row["speedup"] >= 1.4 and loss_pp <= 0.5,
        "torch": "no torch int8 path: eager int8 is not faster than fp32 here (no VNNI)",
        "conditions_start": start}, args.out)


if __name__ == "__main__":
    main()
