"""Runtimes: the quickstart model, fp32 and int8, on ONNX Runtime and OpenVINO, interleaved.

ResNet-20 (untrained, seeded: latency does not depend on the weight values) at the
quickstart target: Fashion-MNIST input 1x28x28, batch 64, 2 threads. Exported to ONNX
and quantised to all-int8 QDQ exactly as a trial does (calibrated on 128 training
images); both files run on both runtimes, the four (runtime, file) pairs timed round
robin (round r times every pair once, as ``slimtune.measurement.targets.measure_interleaved`` does
for one runtime), medians over rounds. Also reports how far OpenVINO's logits fall from
ONNX Runtime's on the same file. Needs ``pip install 'slimtune[openvino]'``.
"""

from __future__ import annotations

import argparse
import contextlib
import tempfile
from dataclasses import replace
from pathlib import Path

import numpy as np
from common import conditions, quickstart, write_result

from slimtune.export import export_onnx, onnx_predict, onnx_session, quantize_onnx
from slimtune.measurement.latency import MeasureProtocol, measure_latency
from slimtune.runtimes import get_runtime
from slimtune.runtimes.openvino_cpu import compile_onnx

RUNTIMES = ("onnxruntime", "openvino")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rounds", type=int, default=9)
    ap.add_argument("--repeats", type=int, default=30)
    ap.add_argument("--out", type=Path)
    args = ap.parse_args()
    start = conditions()
    spec, checked = quickstart()
    shape, batch, threads = checked.data.input_shape, spec.target.batch_size, spec.target.threads
    names = [layer.name for layer in checked.table.layers]
    calib = checked.data.train.first(spec.finetune.calibration_size)
    proto = MeasureProtocol(warmup=10, rounds=1, repeats=args.repeats)
    with tempfile.TemporaryDirectory() as tmp, contextlib.ExitStack() as stack:
        fp32 = export_onnx(checked.model, shape, Path(tmp) / "fp32.onnx")
        files = {"fp32": fp32, "int8": quantize_onnx(fp32, Path(tmp) / "int8.onnx",
                                                     int8_layers=names, calibration=calib)}
        x = checked.data.test.head(batch).x.numpy()
        agreement = {}
        for kind, path in files.items():
            ort_out = onnx_predict(onnx_session(path, threads=threads), x)
            ov_out = compile_onnx(path, shape, batch, threads)(x)[0]
            agreement[kind] = {
                "max_abs_diff": float(np.abs(ov_out - ort_out).max()),
                "max_abs_logit": float(np.abs(ort_out).max()),
                "top1_agreement": float((ov_out.argmax(1) == ort_out.argmax(1)).mean())}
        pairs = {}
        for runtime in RUNTIMES:
            backend = get_runtime(runtime)
            stack.enter_context(backend.context(threads))
            for kind, path in files.items():
                pairs[f"{runtime}-{kind}"] = backend.prepare(path, shape, batch, threads)
        rounds: dict[str, list[float]] = {k: [] for k in pairs}
        for r in range(args.rounds):
            for key, run_once in pairs.items():
                p = proto if r == 0 else replace(proto, warmup=2)
                stats = measure_latency(run_once, runtime=key, threads=threads,
                                        batch_size=batch, protocol=p)
                rounds[key].append(stats.median_ms)
    median = {k: float(np.median(v)) for k, v in rounds.items()}
    rows = []
    for key in pairs:
        runtime, kind = key.split("-")
        rows.append({"runtime": runtime, "model": kind, "median_ms": median[key],
                     "round_medians_ms": rounds[key]})
        print(f"{runtime:12s} {kind}: {median[key]:7.3f} ms  (rounds "
              f"{min(rounds[key]):.3f}-{max(rounds[key]):.3f})", flush=True)
    ratios = {}
    for runtime in RUNTIMES:
        ratios[f"{runtime} int8 speed-up"] = float(np.median(
            [a / b for a, b in zip(rounds[f"{runtime}-fp32"], rounds[f"{runtime}-int8"],
                                   strict=True)]))
    for kind in files:
        ratios[f"openvino / onnxruntime {kind}"] = float(np.median(
            [a / b for a, b in zip(rounds[f"openvino-{kind}"], rounds[f"onnxruntime-{kind}"],
                                   strict=True)]))
    for name, value in ratios.items():
        print(f"{name}: {value:.2f} (median of per-round ratios)")
    for kind, a in agreement.items():
        print(f"OpenVINO vs ORT logits, {kind}: max |diff| {a['max_abs_diff']:.2e} "
              f"(max |logit| {a['max_abs_logit']:.2f}), top-1 agreement {a['top1_agreement']:.3f}")
    import onnxruntime
    import openvino

    write_result("runtimes", {
        "model": "resnet20 (untrained, seed 0), quickstart input 1x28x28",
        "batch_size": batch, "threads": threads, "rounds": args.rounds,
        "repeats": args.repeats, "versions": {"onnxruntime": onnxruntime.__version__,
                                             "openvino": openvino.__version__},
        "rows": rows, "ratios": ratios, "logit_agreement": agreement,
        "conditions_start": start}, args.out)


if __name__ == "__main__":
    main()
