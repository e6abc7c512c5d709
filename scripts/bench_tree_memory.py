"""Run a command and report its wall time and the peak of the summed RSS of its whole process tree (the command and
every descendant, sampled every 0.2 s) -- e.g. ``rlft sweep`` on Ray (driver, GCS, raylet, trial workers) against a
pool of subprocesses.

    python scripts/bench_tree_memory.py -- rlft sweep --config SWEEP.yaml
"""

from __future__ import annotations

import subprocess
import sys
import time

import psutil


def tree_rss(proc: psutil.Process) -> int:
    """Bytes resident in ``proc`` and all its descendants (processes that exit meanwhile are skipped)."""
    total = 0
    for p in [proc, *proc.children(recursive=True)]:
        try:
            total += p.memory_info().rss
        except psutil.Error:
            pass
    return total


def main(cmd: list[str]) -> None:
    t0 = time.time()
    child = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT)
    proc, peak = psutil.Process(child.pid), 0
    while child.poll() is None:
        try:
            peak = max(peak, tree_rss(proc))
        except psutil.Error:
            pass
        time.sleep(0.2)
    print(f"exit {child.returncode}  wall {time.time() - t0:.1f} s  peak tree RSS {peak / 2**20:.0f} MiB")


if __name__ == "__main__":
    main(sys.argv[sys.argv.index("--") + 1 :] if "--" in sys.argv else sys.argv[1:])
