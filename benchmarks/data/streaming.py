"""Streaming data: peak memory flat in the dataset's size, and the loader not the bottleneck.

Writes Fashion-MNIST's train images as PNGs into a temporary ImageFolder tree (60,000
images, and a 6,000-image tree of the first 6,000; 1,000 test images each; deleted at the
end), then:

1. Peak RSS of a short job in a fresh process each (``os.wait4``'s ``ru_maxrss``):
   ``load_data`` (listing, header pass, decode pass for mean/std), ``--steps`` fine-tune
   steps of the quickstart ResNet-20 at batch 64, and the evaluation of val and test --
   on the 60,000-PNG folder, the 6,000-PNG folder, and the same 60,000 images as the
   built-in in-memory tensors (``dataset: fashion-mnist``, val 6,000). Target: the 60,000
   folder job <= 1.2x the 6,000 one.
2. Loading throughput, batches/s at batch 64, shuffled: the old in-memory path (direct
   tensor indexing, as ``train._batches`` did), the tensor-backed Split's DataLoader, and
   the folder's (PNG decode per item) with 0 and 2 worker processes.
3. The share of a fine-tune step spent waiting for the loader (time in ``next(loader)``
   over the whole step, ResNet-20, batch 64) for the folder with 0 and 2 workers and for
   the tensor path. Target: >= 90% of step time is compute.

    .venv/bin/python benchmarks/data/streaming.py --out benchmarks/results/data_streaming.json
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import torch

RESULTS = Path(__file__).resolve().parents[1] / "results"
BATCH = 64
TEST_IMAGES = 1000


def conditions() -> dict[str, Any]:
    return {"cores": os.cpu_count(), "machine": platform.machine(),
            "loadavg_1_5_15": [round(x, 2) for x in os.getloadavg()],
            "when": time.strftime("%Y-%m-%d %H:%M:%S"), "torch": torch.__version__,
            "note": "shared 2-core VM; two other engineers ran tests meanwhile"}


def write_folders(root: Path, images: int) -> tuple[Path, Path, float]:
    """``root/big`` (the first ``images`` train PNGs) and ``root/small`` (a tenth of them),
    each with the first 1,000 t10k images as test; the two roots and the seconds taken."""
    from PIL import Image

    from slimtune.data import FASHION_MNIST_CLASSES, fashion_mnist_dir, read_idx

    folder = fashion_mnist_dir()
    start = time.perf_counter()
    train_x = read_idx(folder / "train-images-idx3-ubyte.gz")[:images]
    train_y = read_idx(folder / "train-labels-idx1-ubyte.gz")[:images]
    test_x = read_idx(folder / "t10k-images-idx3-ubyte.gz")[:TEST_IMAGES]
    test_y = read_idx(folder / "t10k-labels-idx1-ubyte.gz")[:TEST_IMAGES]
    big, small = root / "big", root / "small"
    for tree in (big, small):
        for split in ("train", "test"):
            for c in range(len(FASHION_MNIST_CLASSES)):
                (tree / split / f"c{c}").mkdir(parents=True, exist_ok=True)
    for i, (image, label) in enumerate(zip(train_x, train_y, strict=True)):
        path = big / "train" / f"c{label}" / f"{i:05d}.png"
        Image.fromarray(image, "L").save(path)
        if i < images // 10:
            os.link(path, small / "train" / f"c{label}" / f"{i:05d}.png")
    for i, (image, label) in enumerate(zip(test_x, test_y, strict=True)):
        for tree in (big, small):
            Image.fromarray(image, "L").save(tree / "test" / f"c{label}" / f"{i:05d}.png")
    return big, small, time.perf_counter() - start


def _spec(source: str, root: str | None, workers: int, images: int = 60000) -> Any:
    from slimtune.spec import DataSpec

    if source == "tensor":  # the same images, as tensors; val carved as the folder's is
        val = round(0.1 * images)
        return DataSpec(dataset="fashion-mnist", val_size=val, train_size=images - val,
                        test_size=TEST_IMAGES, workers=workers)
    return DataSpec(folder=Path(root), workers=workers)


def child_job(source: str, root: str | None, steps: int, workers: int,
              images: int) -> dict[str, Any]:
    """The measured job (run in a fresh process): load, fine-tune, evaluate."""
    from slimtune.models import build_builtin
    from slimtune.objective import CLASSIFICATION, evaluate_split
    from slimtune.train import predict, train
    from slimtune.userdata import load_data

    torch.set_num_threads(2)
    t0 = time.perf_counter()
    data = load_data(_spec(source, root, workers, images), seed=0)
    t1 = time.perf_counter()
    model = build_builtin("resnet20", data.num_classes, data.input_shape[0])
    train(model, data.train, steps=steps, batch_size=BATCH, lr=0.05, seed=0)
    t2 = time.perf_counter()
    val, _ = evaluate_split(CLASSIFICATION, lambda x: predict(model, x), data.val)
    test, _ = evaluate_split(CLASSIFICATION, lambda x: predict(model, x), data.test)
    return {"train": len(data.train), "val": len(data.val), "test": len(data.test),
            "load_s": t1 - t0, "train_s": t2 - t1, "eval_s": time.perf_counter() - t2,
            "val_accuracy": val, "test_accuracy": test}


def peak_rss(source: str, root: Path | None, steps: int, images: int) -> dict[str, Any]:
    """Run :func:`child_job` in a fresh process; its result and its peak RSS."""
    args = [sys.executable, __file__, "--child", source, "--steps", str(steps),
            "--images", str(images), "--root", str(root or "")]
    proc = subprocess.Popen(args, stdout=subprocess.PIPE, text=True)
    out = proc.stdout.read() if proc.stdout else ""
    _, status, usage = os.wait4(proc.pid, 0)
    if status != 0:
        raise SystemExit(f"child {source} failed with status {status}")
    row = json.loads(out.strip().splitlines()[-1])
    row["peak_rss_mib"] = usage.ru_maxrss / 1024  # KiB on Linux; workers are not counted
    row["source"] = source
    return row


def throughput(split: Any, batches: int) -> float:
    """Batches/s of a shuffled loader at batch 64 (the first batch not counted)."""
    loader = iter(split.loader(BATCH, shuffle=True, seed=0, steps=batches + 1))
    next(loader)
    start = time.perf_counter()
    for _ in range(batches):
        next(loader)
    return batches / (time.perf_counter() - start)


def old_throughput(x: torch.Tensor, y: torch.Tensor, batches: int) -> float:
    """Batches/s of the old in-memory path: direct indexing of a seeded permutation."""
    order = torch.randperm(len(y), generator=torch.Generator().manual_seed(0))
    x[order[:BATCH]], y[order[:BATCH]]  # the first batch not counted, as for the loaders
    start = time.perf_counter()
    for i in range(1, batches + 1):
        idx = order[i * BATCH:(i + 1) * BATCH]
        x[idx], y[idx]
    return batches / (time.perf_counter() - start)


def loading_share(split: Any, steps: int) -> dict[str, float]:
    """Seconds waiting for batches vs computing in ``steps`` ResNet-20 training steps."""
    import torch.nn.functional as F

    from slimtune.models import build_builtin

    model = build_builtin("resnet20", 10, 1).train()
    opt = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)
    loader = iter(split.loader(BATCH, shuffle=True, seed=0, steps=steps + 1))
    x, y = next(loader)  # the workers' start-up is not a step
    waiting = computing = 0.0
    for _ in range(steps):
        t0 = time.perf_counter()
        loss = F.cross_entropy(model(x), y)
        opt.zero_grad()
        loss.backward()
        opt.step()
        t1 = time.perf_counter()
        x, y = next(loader)
        waiting += time.perf_counter() - t1
        computing += t1 - t0
    return {"loading_s": waiting, "compute_s": computing,
            "compute_share": computing / (computing + waiting)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--steps", type=int, default=30, help="fine-tune steps of the job")
    ap.add_argument("--batches", type=int, default=200, help="throughput batches")
    ap.add_argument("--share-steps", type=int, default=30)
    ap.add_argument("--workers", type=int, default=0, help="the job's data.workers")
    ap.add_argument("--images", type=int, default=60000, help="train PNGs of the big tree")
    ap.add_argument("--child", choices=("folder", "tensor"))
    ap.add_argument("--root", default="")
    ap.add_argument("--out", type=Path, default=RESULTS / "data_streaming.json")
    args = ap.parse_args()
    if args.child:
        print(json.dumps(child_job(args.child, args.root or None, args.steps, args.workers,
                                   args.images)))
        return
    from slimtune.spec import DataSpec
    from slimtune.userdata import load_data

    torch.set_num_threads(2)
    result: dict[str, Any] = {"conditions_start": conditions(), "batch": BATCH,
                              "job_steps": args.steps}
    with tempfile.TemporaryDirectory(prefix="slimtune-streaming-") as tmp:
        big, small, seconds = write_folders(Path(tmp), args.images)
        result["write_pngs_s"], result["images"] = seconds, args.images
        print(f"wrote {args.images} + {args.images // 10} PNGs in {seconds:.1f} s", flush=True)
        rows = [peak_rss("folder", small, args.steps, args.images // 10),
                peak_rss("folder", big, args.steps, args.images),
                peak_rss("tensor", None, args.steps, args.images)]
        for row in rows:
            print(f"{row['source']:6s} train {row['train']:6d}: peak RSS "
                  f"{row['peak_rss_mib']:.0f} MiB, load {row['load_s']:.1f} s, "
                  f"train {row['train_s']:.1f} s, eval {row['eval_s']:.1f} s", flush=True)
        result["peak_memory"] = rows
        result["peak_ratio_big_over_small"] = rows[1]["peak_rss_mib"] / rows[0]["peak_rss_mib"]
        result["peak_ratio_tensor_over_folder"] = (rows[2]["peak_rss_mib"]
                                                       / rows[1]["peak_rss_mib"])
        folder = load_data(DataSpec(folder=big), seed=0).train
        tensor = load_data(_spec("tensor", None, 0, args.images), seed=0).train
        n = args.batches
        rates = {"old_tensor_indexing": old_throughput(tensor.x, tensor.y, n),
                 "tensor_loader": throughput(tensor, n),
                 "folder_loader_workers_0": throughput(folder, n),
                 "folder_loader_workers_2": throughput(folder.with_loading(
                     workers=2, batch_size=BATCH), n)}
        result["batches_per_s"] = rates
        print("batches/s: " + ", ".join(f"{k} {v:.1f}" for k, v in rates.items()), flush=True)
        shares = {"tensor_loader": loading_share(tensor, args.share_steps),
                  "folder_workers_0": loading_share(folder, args.share_steps),
                  "folder_workers_2": loading_share(folder.with_loading(
                      workers=2, batch_size=BATCH), args.share_steps)}
        result["finetune_step"] = shares
        print("compute share of a step: " + ", ".join(
            f"{k} {v['compute_share']:.3f}" for k, v in shares.items()), flush=True)
    result["conditions_end"] = conditions()
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
