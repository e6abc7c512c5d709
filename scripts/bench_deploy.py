"""Export policies and compare the exported artifacts with the library policies (docs/results.md "Deployed policies").

    python scripts/bench_deploy.py NAME=POLICY.safetensors [NAME=POLICY ...] --out DIR [--episodes 100]

Per policy: ``rlft export`` (parity on 1000 observations, the library's own float32 error), batch-1 latency of one
chunk and of one control step on this CPU (one thread, median of 200), then ``rlft eval --policy`` and
``rlft eval --deployed`` on the same episode seeds (100000 ..): success of both, and on how many episodes the two
runs differ at all (success or length). Prints a markdown table and writes ``DIR/bench_deploy.json``.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

from rlft.deploy.evaluate import evaluate_deployed
from rlft.deploy.export import export_policy, step_latency
from rlft.policies.base import load_policy, policy_extra
from rlft.rollout import evaluate_policy
from rlft.train.gate import wilson_interval
from rlft.utils import set_threads


def bench(name: str, path: str, out: Path, episodes: int) -> dict:
    t0 = time.time()
    spec = export_policy(path, out / name)
    export_s = time.time() - t0
    lat = step_latency(out / name)
    extra = policy_extra(path)
    lib_sum, lib = evaluate_policy(
        load_policy(path), extra["env_id"], episodes, 100_000, extra.get("gamma", 0.99), extra.get("obs_horizon", 1)
    )
    dep_sum, dep = evaluate_deployed(out / name, episodes, 100_000)
    differ = sum((a.success_once, a.length) != (b.success_once, b.length) for a, b in zip(lib, dep))
    k_lib, k_dep = (sum(r.success_once for r in rs) for rs in (lib, dep))
    return {
        "name": name,
        "policy": path,
        "class": spec["policy_class"],
        "kind": spec["kind"],
        "export_s": export_s,
        "parity_max_abs_diff": spec["parity"]["max_abs_diff"],
        "library_float32_error": spec["parity"]["library_float32_error"],
        **lat,
        "library_success": lib_sum["eval/success_once"],
        "library_interval": wilson_interval(k_lib, episodes),
        "deployed_success": dep_sum["eval/success_once"],
        "deployed_interval": wilson_interval(k_dep, episodes),
        "episodes": episodes,
        "episodes_that_differ": differ,
    }


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("policies", nargs="+", help="NAME=POLICY.safetensors")
    ap.add_argument("--out", required=True)
    ap.add_argument("--episodes", type=int, default=100)
    args = ap.parse_args()
    set_threads(1)
    out = Path(args.out)
    rows = [bench(*spec.split("=", 1), out, args.episodes) for spec in args.policies]
    (out / "bench_deploy.json").write_text(json.dumps(rows, indent=2))
    print(
        "| policy | class | parity max abs diff | library float32 error | chunk ms (p50) | step ms (p50) | "
        "success: library | success: exported | episodes that differ |"
    )
    print("|---|---|---|---|---|---|---|---|---|")
    for r in rows:
        lo, hi = r["library_interval"]
        dlo, dhi = r["deployed_interval"]
        print(
            f"| {r['name']} | {r['class']} | {r['parity_max_abs_diff']:.1e} | {r['library_float32_error']:.1e} | "
            f"{r['chunk_ms_p50']:.2f} | {r['step_ms_p50']:.3f} | {r['library_success']:.2f} [{lo:.2f}, {hi:.2f}] | "
            f"{r['deployed_success']:.2f} [{dlo:.2f}, {dhi:.2f}] | {r['episodes_that_differ']} / {r['episodes']} |"
        )


if __name__ == "__main__":
    main()
