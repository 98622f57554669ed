"""Reproducibility: the same model measured in separate processes (target: medians within 5%).

Runs ``slimtune latency quickstart --json --no-cache`` (ResNet-20, batch 64, 2 threads, the
trial protocol: 20 warm-up calls, 5 rounds of 100) in ``--processes`` fresh processes per
configuration, the configurations alternating (A1 B1 C1 A2 B2 C2 ...) so drifting load
hits them alike. Reports each configuration's medians and their max/min spread.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
from pathlib import Path

from common import conditions, write_result

CONFIGS = {  # name -> (runtime, policy: all layers int8?)
    "onnxruntime-fp32": ("onnxruntime", False),
    "onnxruntime-int8": ("onnxruntime", True),
    "torch-fp32": ("torch", False),
}


def _job(tmp: Path, runtime: str) -> Path:
    from slimtune.spec import load_spec

    spec = load_spec("quickstart")
    data = spec.model_dump(by_alias=True, mode="json", exclude_none=True)
    data["target"]["runtime"] = runtime
    import yaml

    path = tmp / f"{runtime}.yaml"
    path.write_text(yaml.safe_dump(data))
    return path


def _int8_policy(tmp: Path) -> Path:
    from common import quickstart

    from slimtune.spaces import SearchSpace

    spec, checked = quickstart()
    space = SearchSpace.from_table(checked.table, spec.space.prune_ratios, spec.space.bits,
                                   round_to=spec.space.round_to)
    path = tmp / "int8.json"
    space.uniform(0.0, 8).save(path)
    return path


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--processes", type=int, default=3)
    ap.add_argument("--configs", nargs="+", default=list(CONFIGS))
    ap.add_argument("--out", type=Path)
    args = ap.parse_args()
    start = conditions()
    medians: dict[str, list[float]] = {c: [] for c in args.configs}
    with tempfile.TemporaryDirectory() as tmp_name:
        tmp = Path(tmp_name)
        int8 = _int8_policy(tmp)
        for i in range(args.processes):
            for name in args.configs:
                runtime, all_int8 = CONFIGS[name]
                cmd = [sys.executable, "-m", "slimtune.cli", "latency", str(_job(tmp, runtime)),
                       "--json", "--no-cache"] + (["--policy", str(int8)] if all_int8 else [])
                out = subprocess.run(cmd, capture_output=True, text=True, check=True).stdout
                figures = json.loads(out)
                medians[name].append(figures["median_ms"])
                print(f"process {i + 1} {name:<18} median {figures['median_ms']:.3f} ms "
                      f"(p10 {figures['p10_ms']:.3f}, p90 {figures['p90_ms']:.3f}, "
                      f"cv {figures['cv']:.3f})", flush=True)
    rows = []
    for name, values in medians.items():
        spread = (max(values) - min(values)) / min(values) * 100
        rows.append({"config": name, "medians_ms": values, "spread_pct": spread,
                     "target_met": spread <= 5.0})
        print(f"{name:<18} medians {' '.join(f'{v:.3f}' for v in values)} ms: "
              f"max/min - 1 = {spread:.1f}%")
    write_result("reproducibility", {"rows": rows, "conditions_start": start,
                                     "protocol": "trial default: warmup 20, 5 rounds x 100",
                                     "model": "resnet20 quickstart, batch 64, 2 threads"},
                 args.out)


if __name__ == "__main__":
    main()
