"""Sub-8-bit weights: quantisation-aware fine-tuning against rounding after it.

On the quickstart baseline (ResNet-20, Fashion-MNIST subset), the same fixed mixed-
precision policies are evaluated as trials twice, with ``finetune.qat`` off (fine-tune
in float, round once after) and on (fine-tune through the rounding, straight-through
gradients), at the same fine-tune steps and seed. Reports validation and test accuracy
and the packed size of the deployed model (ONNX Runtime; 8-bit layers run int8).
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from methods import run_policies

from slimtune.policy import Policy
from slimtune.spec import load_spec


def _policies(table) -> list[Policy]:
    names = [layer.name for layer in table.layers]
    ends = {names[0], names[-1]}  # first conv and classifier: 8 bits, the usual practice
    sig = table.signature()
    return [Policy(bits=dict.fromkeys(names, 4), model_signature=sig),
            Policy(bits={n: 8 if n in ends else 4 for n in names}, model_signature=sig),
            Policy(bits={n: 8 if n in ends else 2 for n in names}, model_signature=sig)]


POLICY_NAMES = ["all 4-bit", "4-bit, first/last 8", "2-bit, first/last 8"]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--steps", type=int, nargs="+", default=[80, 300])
    ap.add_argument("--out", type=Path, default=Path("runs/bench/qat"))
    ap.add_argument("--results", type=Path, default=Path("benchmarks/results/qat.json"))
    args = ap.parse_args()

    quick = load_spec("quickstart")
    base = quick.model_dump(by_alias=True, mode="json", exclude_none=True)
    args.out.mkdir(parents=True, exist_ok=True)
    rows, baseline = [], None
    for steps in args.steps:
        for qat in (False, True):
            finetune = {**base.get("finetune", {}), "steps": steps, "qat": qat}
            outcome = run_policies(base, args.out, f"qat-{qat}-{steps}", _policies,
                                   sections={"finetune": finetune})
            baseline = outcome.baseline
            for name, r in zip(POLICY_NAMES, outcome.results, strict=True):
                rows.append({"policy": name, "steps": steps, "qat": qat, "state": r.state,
                             "val_accuracy": r.accuracy, "test_accuracy": r.test_accuracy,
                             "size_bytes": r.size_bytes, "seconds": r.seconds})
                print(json.dumps(rows[-1]), flush=True)
    report = {"baseline": {k: baseline[k] for k in ("accuracy", "test_accuracy",
                                                    "size_bytes")},
              "rows": rows}
    args.results.parent.mkdir(parents=True, exist_ok=True)
    args.results.write_text(json.dumps(report, indent=2) + "\n")
    print(f"baseline: test {baseline['test_accuracy']:.4f}, {baseline['size_bytes']} bytes")
    print(f"{'policy':<22}{'steps':>6}{'PTQ test':>10}{'QAT test':>10}{'size KB':>9}")
    for name in POLICY_NAMES:
        for steps in args.steps:
            got = {r["qat"]: r for r in rows if r["policy"] == name and r["steps"] == steps}
            print(f"{name:<22}{steps:>6}{got[False]['test_accuracy'] or 0:>10.4f}"
                  f"{got[True]['test_accuracy'] or 0:>10.4f}"
                  f"{(got[True]['size_bytes'] or 0) / 1024:>9.1f}")


if __name__ == "__main__":
    main()
