"""Structural speed-up: measured speed-up / MAC reduction of uniformly pruned ResNet-20s.

Runs ``benchmarks/speedup.py`` (ratios 0.25, 0.5, 0.75; ONNX Runtime and torch; batch 1
and 64; 2 threads; candidates interleaved round by round) and writes its rows with the
machine's conditions to ``benchmarks/results/latency_speedup.json``. Target: >= 0.8 at 64.
"""

from __future__ import annotations

import json
import subprocess
import sys
import tempfile
from pathlib import Path

from common import conditions, write_result

HERE = Path(__file__).resolve().parent


def main() -> None:
    start = conditions()
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "speedup.json"
        subprocess.run([sys.executable, str(HERE.parent / "speedup.py"), "--out", str(out),
                        *sys.argv[1:]], check=True)
        rows = json.loads(out.read_text())
    at64 = [r for r in rows if r["batch"] == 64]
    write_result("speedup", {"rows": rows, "conditions_start": start,
                             "target_met_at_batch_64": all(r["efficiency"] >= 0.8 for r in at64)})


if __name__ == "__main__":
    main()
