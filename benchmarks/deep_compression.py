"""Deep Compression on the quickstart baseline: file size and accuracy against sparsity.

The quickstart's ResNet-20 on its Fashion-MNIST subset (the cached baseline; trained in
about 25 s when missing). Per sparsity: zero that fraction of every conv/linear layer's
weights by magnitude, fine-tune ``--steps`` steps with distillation from the baseline
while the zeros are held (``keep_sparsity``), share each layer's surviving weights among
``--clusters`` values (k-means), then write the container of
``slimtune export --format compressed`` and read it back (bit-exact check). Accuracy is
the torch model's on the validation and test splits; latency is ONNX Runtime fp32 at
the quickstart's batch 64 and 2 threads: Deep Compression serves size, not speed.

``--arch lenet300`` / ``--arch lenet5`` (either or both) runs the paper's own setting
instead: Deep Compression's MNIST-class nets (LeNet-300-100, Caffe LeNet-5) on the full
Fashion-MNIST (55,000 train / 5,000 val carved from train / 10,000 test), with a baseline
the project trains and caches (``prepare_baseline``), and the paper's recipe: per-layer
sparsity (its Tables 2-3) reached by iterative magnitude pruning with retraining
(``--stages`` stages on a cubic ramp, ``--steps`` masked steps each), then k-means
sharing per layer with the shared centroids fine-tuned (``keep_shared``,
``--share-steps``), then Huffman coding in the container ``slimtune export --format
compressed`` writes. The container is written by ``write_compressed`` and by the real
``slimtune export`` on a trial-shaped directory, read back by ``read_compressed`` and by
``slimtune load --check``, and compared tensor by tensor. Latency: ONNX Runtime fp32,
batch 64, 2 threads, baseline and compressed model measured round-robin in one process.
Writes ``benchmarks/results/deep_compression_mnist.json``.
"""

from __future__ import annotations

import argparse
import contextlib
import copy
import io
import json
import os
import tempfile
import time
from dataclasses import replace
from pathlib import Path

import torch

from slimtune.baseline import prepare_baseline
from slimtune.compress import packed_size_bytes
from slimtune.compressed_file import read_compressed, write_compressed
from slimtune.data import load_dataset
from slimtune.deep_compression import compress_weights, keep_shared, keep_sparsity
from slimtune.export import export_onnx, onnx_predict, onnx_session
from slimtune.layers import build_layer_table
from slimtune.measurement.latency import MeasureProtocol, measure_model
from slimtune.measurement.targets import measure_interleaved
from slimtune.policy import Policy
from slimtune.spec import load_spec, parse_spec
from slimtune.train import accuracy, predict, train

MNIST_ARCHS = ("lenet300", "lenet5")
# Han et al. 2016, Tables 2 and 3: the fraction of each layer's weights pruned, and the
# shared values per layer (2 ** bits: 6 bits in LeNet-300-100; 8 bits conv, 5 bits fc
# in LeNet-5).
PAPER = {
    "lenet300": {"sparsity": {"fc1": 0.92, "fc2": 0.91, "fc3": 0.74},
                 "clusters": {"fc1": 64, "fc2": 64, "fc3": 64}},
    "lenet5": {"sparsity": {"conv1": 0.34, "conv2": 0.88, "fc1": 0.92, "fc2": 0.81},
               "clusters": {"conv1": 256, "conv2": 256, "fc1": 32, "fc2": 32}},
}
# The baselines' recipe (part of their cache key); lenet5 is ~10x dearer per step.
MNIST_BASELINE = {"lenet300": {"epochs": 20, "batch_size": 128, "lr": 0.05},
                  "lenet5": {"epochs": 10, "batch_size": 128, "lr": 0.02}}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--arch", nargs="+", default=["resnet20"],
                    choices=("resnet20", *MNIST_ARCHS),
                    help="resnet20: the quickstart baseline, uniform sparsity; lenet300/lenet5:"
                         " the paper's MNIST-class setting and per-layer recipe")
    ap.add_argument("--sparsities", type=float, nargs="+", default=[0.5, 0.7, 0.8, 0.9])
    ap.add_argument("--clusters", type=int, nargs="+",
                    help="shared values per layer (resnet20 default: 16; lenet: the paper's "
                         "per-layer counts, plus a uniform count per value given)")
    ap.add_argument("--steps", type=int,
                    help="masked fine-tune steps (resnet20 default 300; lenet: per pruning "
                         "stage, default 600)")
    ap.add_argument("--stages", type=int, default=3, help="lenet: iterative pruning stages")
    ap.add_argument("--lr", type=float, default=0.01)
    ap.add_argument("--share-steps", type=int,
                    help="then fine-tune the shared values this many steps (keep_shared; "
                         "resnet20 default 0, lenet default 600)")
    ap.add_argument("--distill", action="store_true",
                    help="lenet: fine-tune with distillation from the baseline (default: "
                         "plain cross-entropy, as the paper retrained)")
    ap.add_argument("--dense-control", action="store_true",
                    help="lenet: also train the unpruned baseline with the same steps")
    ap.add_argument("--baseline-epochs", type=float, help="lenet: override the baseline recipe")
    ap.add_argument("--rounds", type=int, default=9, help="lenet: latency rounds")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--latency", action="store_true", help="also measure ORT fp32 latency")
    ap.add_argument("--out", type=Path)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    if set(args.arch) & set(MNIST_ARCHS):
        if "resnet20" in args.arch:
            ap.error("--arch resnet20 runs apart from lenet300/lenet5")
        args.out = args.out or Path("benchmarks/results/deep_compression_mnist.json")
        args.steps = 600 if args.steps is None else args.steps
        args.share_steps = 600 if args.share_steps is None else args.share_steps
        return mnist_main(args)
    args.out = args.out or Path("benchmarks/results/deep_compression.json")
    args.clusters = args.clusters or [16]
    args.steps = 300 if args.steps is None else args.steps
    args.share_steps = args.share_steps or 0

    spec = load_spec("quickstart")
    d = spec.data
    data = load_dataset(d.dataset, train_size=d.train_size, val_size=d.val_size,
                        test_size=d.test_size, seed=spec.baseline.seed)
    base = prepare_baseline(spec, data).model.eval()
    shape = data.input_shape
    table = build_layer_table(base, shape)
    names = [li.name for li in table.layers]

    def scores(model: torch.nn.Module) -> tuple[float, float]:
        return (accuracy(predict(model, data.val), data.val.y),
                accuracy(predict(model, data.test), data.test.y))

    tmp = Path(tempfile.mkdtemp())
    dense_bytes = sum(v.numel() * v.element_size() for v in base.state_dict().values())
    int8 = Policy(bits=dict.fromkeys(names, 8))
    val, test = scores(base)
    baseline = {"val_accuracy": val, "test_accuracy": test, "state_dict_bytes": dense_bytes,
                "container_bytes": write_compressed(base, table, Policy(), tmp / "base.stdc"),
                "int8_packed_bytes": packed_size_bytes(base, table, int8),
                "params": sum(p.numel() for p in base.parameters())}
    print(f"baseline: val {val:.4f} test {test:.4f}, {dense_bytes} B fp32 state dict, "
          f"{baseline['int8_packed_bytes']} B packed int8")
    rows = []
    for sparsity in args.sparsities:
        masked = Policy(sparsity=dict.fromkeys(names, sparsity))
        model = compress_weights(copy.deepcopy(base), table, masked)
        zero_shot = scores(model)
        start = time.perf_counter()
        with keep_sparsity(model, table, masked):
            train(model, data.train, steps=args.steps, batch_size=64, lr=args.lr, seed=0,
                  teacher=base, temperature=4.0, alpha=0.7)
        seconds = time.perf_counter() - start
        tuned = scores(model)
        for k in args.clusters:
            policy = Policy(sparsity=dict.fromkeys(names, sparsity),
                            clusters=dict.fromkeys(names, k))
            path = tmp / f"s{sparsity}_k{k}.stdc"
            shared = compress_weights(copy.deepcopy(model), table, policy)
            if args.share_steps:
                with keep_shared(shared, table, policy):
                    train(shared, data.train, steps=args.share_steps, batch_size=64,
                          lr=args.lr / 2, seed=1, teacher=base, temperature=4.0, alpha=0.7)
            size = write_compressed(shared, table, policy, path)
            exact = all(torch.equal(v, shared.state_dict()[n])
                        for n, v in read_compressed(path).items())
            val, test = scores(shared)
            row = {"sparsity": sparsity, "clusters": k, "bytes": size,
                   "reduction_vs_fp32": dense_bytes / size,
                   "val_accuracy": val, "test_accuracy": test,
                   "val_accuracy_masked_no_finetune": zero_shot[0],
                   "val_accuracy_finetuned_unshared": tuned[0],
                   "test_drop_pp": 100 * (baseline["test_accuracy"] - test),
                   "finetune_steps": args.steps, "finetune_seconds": seconds,
                   "shared_finetune_steps": args.share_steps,
                   "bit_exact_read_back": exact}
            rows.append(row)
            print(f"sparsity {sparsity:.2f} k {k:>3}: {size:>7} B "
                  f"({row['reduction_vs_fp32']:5.1f}x)"
                  f"  val {val:.4f} test {test:.4f} (drop {row['test_drop_pp']:+.2f} pp; "
                  f"masked w/o fine-tune {zero_shot[0]:.4f}, fine-tuned unshared {tuned[0]:.4f})"
                  f"  bit-exact {exact}")
            if args.latency:
                protocol = MeasureProtocol(warmup=10, rounds=5, repeats=30)
                lat = {}
                for tag, m in (("baseline", base), ("deep_compression", shared)):
                    onnx = export_onnx(m, shape, tmp / f"{tag}.onnx")
                    lat[tag] = measure_model(onnx, "onnxruntime", shape, 64, args.threads,
                                             protocol).median_ms
                row["latency_ms_batch64"] = lat
                print(f"  ORT fp32 batch 64: baseline {lat['baseline']:.3f} ms, "
                      f"deep-compressed {lat['deep_compression']:.3f} ms")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps({"model": "resnet20", "data": "quickstart fashion-mnist",
                                    "baseline": baseline, "rows": rows}, indent=2) + "\n")



# --- the paper's MNIST-class setting ----------------------------------------------------

def mnist_spec(arch: str, epochs: float | None):
    """A job spec for ``arch`` on the full Fashion-MNIST; its baseline recipe is the cache
    key of the baseline ``prepare_baseline`` trains (once) and reuses."""
    recipe = dict(MNIST_BASELINE[arch])
    if epochs is not None:
        recipe["epochs"] = epochs
    return parse_spec({"name": f"dc-{arch}", "model": {"arch": arch},
                       "data": {"dataset": "fashion-mnist"},
                       "budget": {"latency_fraction": 1.0},
                       "target": {"runtime": "onnxruntime", "threads": 2, "batch_size": 64},
                       "baseline": recipe})


def cubic_ramp(final: dict[str, float], stages: int) -> list[dict[str, float]]:
    """Per-stage sparsity on Zhu & Gupta's cubic ramp: big steps first, small at the end."""
    return [{n: s * (1 - (1 - i / stages) ** 3) for n, s in final.items()}
            for i in range(1, stages + 1)]


def cli_round_trip(model, table, policy, arch: str, shape, num_classes: int,
                   folder: Path) -> dict:
    """``slimtune export --format compressed`` and ``slimtune load --check`` on a
    trial-shaped directory holding ``model``: exit codes, bytes, and the load summary."""
    from slimtune.cli import main as cli

    job = folder / f"{arch}-job"
    (job / "trials" / "0").mkdir(parents=True, exist_ok=True)
    (job / "trials.jsonl").write_text("")
    model_pt = job / "trials" / "0" / "model.pt"
    torch.save({"state_dict": model.state_dict(),
                "policy": replace(policy, model_signature=table.signature()).to_dict(),
                "model": {"arch": arch}, "round_to": 1, "input_shape": list(shape),
                "num_classes": num_classes}, model_pt)
    out = folder / f"{arch}.stdc"
    text = io.StringIO()
    with contextlib.redirect_stdout(text):
        export_rc = cli(["export", str(job), "--trial", "0", "--format", "compressed",
                         "--out", str(out)])
        load_rc = cli(["load", str(out), "--check", str(model_pt), "--quiet"])
    # paths relative to the temporary folder: no machine path goes into the results
    lines = [ln.replace(f"{folder}/", "") for ln in text.getvalue().splitlines() if ln.strip()]
    return {"export_exit": export_rc, "load_check_exit": load_rc,
            "bytes": out.stat().st_size if out.is_file() else None,
            "load_output": lines[-2:], "file": out}


def mnist_main(args) -> None:
    start_all = time.perf_counter()
    conditions = {"loadavg_start": [round(x, 2) for x in os.getloadavg()],
                  "cores": os.cpu_count(), "threads": args.threads}
    tmp = Path(tempfile.mkdtemp())
    results = {}
    seed = mnist_spec(args.arch[0], args.baseline_epochs).baseline.seed
    data = load_dataset("fashion-mnist", train_size=None, val_size=None, test_size=None,
                        seed=seed)

    def scores(model: torch.nn.Module) -> dict[str, float]:
        return {"val": accuracy(predict(model, data.val), data.val.y),
                "test": accuracy(predict(model, data.test), data.test.y)}

    for arch in args.arch:
        spec = mnist_spec(arch, args.baseline_epochs)
        assert spec.baseline.seed == seed
        t0 = time.perf_counter()
        prepared = prepare_baseline(spec, data)
        base = prepared.model.eval()
        baseline_seconds = time.perf_counter() - t0
        shape = data.input_shape
        table = build_layer_table(base, shape)
        names = [li.name for li in table.layers]
        paper = PAPER[arch]
        assert set(paper["sparsity"]) == set(names), names

        params = sum(p.numel() for p in base.parameters())
        state = base.state_dict()
        assert all(v.dtype == torch.float32 for v in state.values())
        fp32_bytes = sum(v.numel() * v.element_size() for v in state.values())
        base_acc = scores(base)
        kw = {"batch_size": 64, "lr": args.lr, "teacher": base if args.distill else None}
        print(f"{arch}: baseline ({prepared.source}, {baseline_seconds:.0f} s) val "
              f"{base_acc['val']:.4f} test {base_acc['test']:.4f}; {params} params, "
              f"{fp32_bytes} B fp32 state dict", flush=True)

        # iterative magnitude pruning with retraining (the zeros held while training)
        model = copy.deepcopy(base)
        stages = []
        t0 = time.perf_counter()
        for i, target in enumerate(cubic_ramp(paper["sparsity"], args.stages)):
            masked = Policy(sparsity=target)
            compress_weights(model, table, masked)
            pruned_acc = scores(model)
            with keep_sparsity(model, table, masked):
                train(model, data.train, steps=args.steps, seed=10 + i, **kw)
            stages.append({"sparsity": {n: round(s, 4) for n, s in target.items()},
                           "val_pruned": pruned_acc["val"], "val_retrained": scores(model)["val"]})
            print(f"  stage {i + 1}/{args.stages}: sparsity "
                  + " ".join(f"{n} {s:.3f}" for n, s in target.items())
                  + f"  val {pruned_acc['val']:.4f} -> retrained {stages[-1]['val_retrained']:.4f}",
                  flush=True)
        prune_seconds = time.perf_counter() - t0
        pruned_acc = scores(model)
        control = None
        if args.dense_control:  # the same training, no zeros: does extra training alone help?
            dense = copy.deepcopy(base)
            for i in range(args.stages):
                train(dense, data.train, steps=args.steps, seed=10 + i, **kw)
            train(dense, data.train, steps=args.share_steps, seed=99, **kw)
            control = scores(dense)
            print(f"  dense control (same steps, nothing pruned): val {control['val']:.4f} "
                  f"test {control['test']:.4f}", flush=True)
        one_shot = scores(compress_weights(copy.deepcopy(base), table,
                                           Policy(sparsity=paper["sparsity"])))

        settings = [("paper", paper["clusters"])]
        settings += [(f"uniform-{k}", dict.fromkeys(names, k)) for k in args.clusters or []]
        rows = []
        for label, clusters in settings:
            policy = Policy(sparsity=paper["sparsity"], clusters=clusters)
            shared = compress_weights(copy.deepcopy(model), table, policy)
            shared_acc_before = scores(shared)
            t0 = time.perf_counter()
            with keep_shared(shared, table, policy):
                train(shared, data.train, steps=args.share_steps, seed=99, **kw)
            share_seconds = time.perf_counter() - t0
            acc = scores(shared)
            path = tmp / f"{arch}-{label}.stdc"
            size = write_compressed(shared, table, policy, path)
            mine = shared.state_dict()
            back = read_compressed(path)
            exact = set(back) == set(mine) and all(
                back[n].dtype == mine[n].dtype
                and back[n].numpy().tobytes() == mine[n].numpy().tobytes() for n in mine)
            cli_check = cli_round_trip(shared, table, policy, arch, shape, data.num_classes,
                                       tmp / label)
            cli_file = cli_check.pop("file")
            cli_check["same_bytes_as_write_compressed"] = cli_file.read_bytes() == path.read_bytes()
            zeros = {n: float((dict(shared.named_modules())[n].weight == 0).float().mean())
                     for n in names}
            distinct = {n: int(torch.unique(dict(shared.named_modules())[n].weight).numel())
                        for n in names}

            onnx_base = export_onnx(base, shape, tmp / f"{arch}-base.onnx")
            onnx_dc = export_onnx(shared, shape, tmp / f"{arch}-{label}.onnx")
            ort_test = accuracy(onnx_predict(onnx_session(onnx_dc, threads=args.threads),
                                             data.test), data.test.y)
            protocol = MeasureProtocol(warmup=10, rounds=args.rounds, repeats=30,
                                       min_seconds_per_round=0.3)
            lat_base, lat_dc = measure_interleaved(
                [(onnx_base, shape), (onnx_dc, shape)], runtime="onnxruntime",
                batch_size=64, threads=args.threads, protocol=protocol)
            row = {
                "setting": label, "sparsity": paper["sparsity"], "clusters": clusters,
                "weights_zero_fraction": zeros, "distinct_values_per_layer": distinct,
                "container_bytes": size, "reduction_vs_fp32": fp32_bytes / size,
                "val_accuracy": acc["val"], "test_accuracy": acc["test"],
                "test_accuracy_onnxruntime": ort_test,
                "test_drop_pp": 100 * (base_acc["test"] - acc["test"]),
                "val_drop_pp": 100 * (base_acc["val"] - acc["val"]),
                "accuracy_shared_before_finetune": shared_acc_before,
                "bit_exact_read_back": exact, "cli": cli_check,
                "share_finetune_steps": args.share_steps, "share_finetune_seconds": share_seconds,
                "latency_ms_batch64": {
                    "baseline": lat_base.median_ms, "deep_compression": lat_dc.median_ms,
                    "ratio": lat_dc.median_ms / lat_base.median_ms,
                    "baseline_round_medians": list(lat_base.round_medians_ms),
                    "deep_compression_round_medians": list(lat_dc.round_medians_ms)},
            }
            rows.append(row)
            print(f"  {label:<11} {size:>7} B ({row['reduction_vs_fp32']:5.1f}x)  val "
                  f"{acc['val']:.4f} test {acc['test']:.4f} (drop {row['test_drop_pp']:+.2f} pp"
                  f"; shared before fine-tune {shared_acc_before['test']:.4f})  bit-exact "
                  f"{exact}, CLI export/load {cli_check['export_exit']}/"
                  f"{cli_check['load_check_exit']}  ORT b64 {lat_base.median_ms:.3f} -> "
                  f"{lat_dc.median_ms:.3f} ms", flush=True)
        results[arch] = {
            "params": params, "fp32_state_dict_bytes": fp32_bytes,
            "fp32_bytes_counted": "every state-dict tensor (all float32 parameters: weights "
                                  "and biases; these nets have no buffers) at 4 bytes",
            "baseline": {"source": prepared.source, "cache_key": prepared.cache_key,
                         "recipe": spec.baseline.model_dump(), "seconds": baseline_seconds,
                         "val_accuracy": base_acc["val"], "test_accuracy": base_acc["test"],
                         "container_bytes_no_compression": write_compressed(
                             base, table, Policy(), tmp / f"{arch}-plain.stdc")},
            "pruning": {"final_sparsity": paper["sparsity"], "stages": stages,
                        "steps_per_stage": args.steps, "seconds": prune_seconds,
                        "val_accuracy": pruned_acc["val"], "test_accuracy": pruned_acc["test"],
                        "one_shot_no_retrain": one_shot},
            "dense_control": control,
            "rows": rows,
        }
    conditions["loadavg_end"] = [round(x, 2) for x in os.getloadavg()]
    best = [(a, r) for a, res in results.items() for r in res["rows"]
            if r["reduction_vs_fp32"] >= 20 and r["test_drop_pp"] <= 1.0]
    out = {"data": {"dataset": "fashion-mnist", "train": len(data.train), "val": len(data.val),
                    "test": len(data.test)},
           "recipe": {"stages": args.stages, "steps_per_stage": args.steps,
                      "share_steps": args.share_steps, "batch_size": 64, "lr": args.lr,
                      "dense_control": args.dense_control,
                      "schedule": "SGD momentum 0.9 nesterov, wd 5e-4, cosine per stage",
                      "loss": "distillation from the baseline" if args.distill
                              else "cross-entropy"},
           "latency": {"runtime": "onnxruntime fp32", "batch_size": 64,
                       "threads": args.threads, "rounds": args.rounds,
                       "repeats": "at least 30 and 0.3 s per round",
                       "interleaved": True},
           "target": ">= 20x smaller than the fp32 state dict at <= 1 pp test-accuracy drop",
           "target_met_by": [f"{a}/{r['setting']}" for a, r in best],
           "wall_seconds": time.perf_counter() - start_all, "conditions": conditions,
           "models": results}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(out, indent=2) + "\n")
    print(f"wrote {args.out} ({out['wall_seconds']:.0f} s); target met by: "
          f"{', '.join(out['target_met_by']) or 'none'}")


if __name__ == "__main__":
    main()
