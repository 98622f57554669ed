"""Deep Compression on the quickstart baseline: file size and accuracy against sparsity.

The quickstart's ResNet-20 on its Fashion-MNIST subset (the cached baseline; trained in
about 25 s when missing). Per sparsity: zero that fraction of every conv/linear layer's
weights by magnitude, fine-tune ``--steps`` steps with distillation from the baseline
while the zeros are held (``keep_sparsity``), share each layer's surviving weights among
``--clusters`` values (k-means), then write the container of
``slimtune export --format compressed`` and read it back (bit-exact check). Accuracy is
the torch model's on the validation and test splits; latency is ONNX Runtime fp32 at
the quickstart's batch 64 and 2 threads: Deep Compression serves size, not speed.
"""

from __future__ import annotations

import argparse
import copy
import json
import tempfile
import time
from pathlib import Path

import torch

from slimtune.baseline import prepare_baseline
from slimtune.compress import packed_size_bytes
from slimtune.data import load_dataset
from slimtune.deep_compression import (
    compress_weights,
    keep_shared,
    keep_sparsity,
    read_compressed,
    write_compressed,
)
from slimtune.export import export_onnx
from slimtune.latency import MeasureProtocol, measure_model
from slimtune.layers import build_layer_table
from slimtune.policy import Policy
from slimtune.spec import load_spec
from slimtune.train import accuracy, predict, train


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--sparsities", type=float, nargs="+", default=[0.5, 0.7, 0.8, 0.9])
    ap.add_argument("--clusters", type=int, nargs="+", default=[16])
    ap.add_argument("--steps", type=int, default=300)
    ap.add_argument("--lr", type=float, default=0.01)
    ap.add_argument("--share-steps", type=int, default=0,
                    help="then fine-tune the shared values this many steps (keep_shared)")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--latency", action="store_true", help="also measure ORT fp32 latency")
    ap.add_argument("--out", type=Path, default=Path("benchmarks/results/deep_compression.json"))
    args = ap.parse_args()
    torch.set_num_threads(args.threads)

    spec = load_spec("quickstart")
    d = spec.data
    data = load_dataset(d.dataset, train_size=d.train_size, val_size=d.val_size,
                        test_size=d.test_size, seed=spec.baseline.seed)
    base = prepare_baseline(spec, data).model.eval()
    shape = data.input_shape
    table = build_layer_table(base, shape)
    names = [li.name for li in table.layers]

    def scores(model: torch.nn.Module) -> tuple[float, float]:
        return (accuracy(predict(model, data.val.x), data.val.y),
                accuracy(predict(model, data.test.x), data.test.y))

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


if __name__ == "__main__":
    main()
