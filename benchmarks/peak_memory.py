"""Wall time and peak memory of a command, counting every process it starts.

``/usr/bin/time`` reports the largest single process; a slimtune job also runs Ray's
raylet, GCS and worker processes, so this samples the summed RSS of the whole process
tree (and of Ray processes started by it) every 0.2 s.

    python benchmarks/peak_memory.py -- slimtune run quickstart --out runs/qs --overwrite
"""

from __future__ import annotations

import subprocess
import sys
import time

import psutil


def tree_rss(root: psutil.Process) -> int:
    total = 0
    for proc in [root, *root.children(recursive=True)]:
        try:
            total += proc.memory_info().rss
        except psutil.Error:
            pass
    return total


def main() -> int:
    argv = sys.argv[1:]
    if argv[:1] == ["--"]:
        argv = argv[1:]
    start = time.perf_counter()
    child = subprocess.Popen(argv)
    root = psutil.Process(child.pid)
    peak = 0
    while child.poll() is None:
        try:
            peak = max(peak, tree_rss(root))
        except psutil.Error:
            pass
        time.sleep(0.2)
    wall = time.perf_counter() - start
    print(f"exit {child.returncode}; wall {wall:.1f} s; peak RSS of the process tree "
          f"{peak / 2**30:.2f} GiB", file=sys.stderr)
    return child.returncode


if __name__ == "__main__":
    sys.exit(main())
