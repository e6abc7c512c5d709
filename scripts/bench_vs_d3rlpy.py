"""Update throughput of rlft's SAC/RLPD and IQL next to d3rlpy's SAC and IQL, interleaved in one run.

    python scripts/bench_vs_d3rlpy.py [--threads 1 2] [--omp-wait-policy default passive] [--rounds 7] \
        [--updates 20] [--max-seconds 10] [--warmup 10] [--d3rlpy-python /tmp/d3venv/bin/python]

d3rlpy is NOT a dependency of rlft: it lives in its own virtual environment, whose interpreter is given by
``--d3rlpy-python``. Every measured setting runs in its own long-lived worker process (``--worker``, the same file)
under the right interpreter: the current one for rlft, the d3rlpy one for d3rlpy. Each worker builds its algorithm,
pre-builds 8 batches of random data (rlft: ``ChunkBatch``; d3rlpy: ``TorchMiniBatch`` made from a
``TransitionMiniBatch`` sampled from a random ``MDPDataset``), runs ``--warmup`` untimed updates, then waits. The
parent then runs ``--rounds`` rounds; in each, every worker in turn (rotating order) times ``--updates`` consecutive
updates while the others sleep on a pipe. Interleaving means a change in the machine's background load hits every
row alike, so the ratios stay fair even when the absolute numbers move. Reported: median updates/s over rounds,
ms/update, the ratio to d3rlpy's same algorithm at the same thread count, and the worker's CPU time / wall time
(below 1 at 1 thread: the process was waiting for a core).

Setting: obs 28, action 5 (rlft: chunk 1x5), batch 256; every network (actor, critics, V) is an MLP
(256, 256, 256) with LayerNorm (d3rlpy: ``VectorEncoderFactory(hidden_units=[256, 256, 256],
use_layer_norm=True)`` for actor, critic and value encoders). Threads: ``torch.set_num_threads(N)`` and one
inter-op thread in every worker (and OMP/MKL_NUM_THREADS=N in its environment). With N > 1,
``--omp-wait-policy`` also sets OMP_WAIT_POLICY (torch's CPU wheels use GNU OpenMP, which by default spins at every
parallel region's barrier before sleeping: next to another busy process, 2 threads then run 10-100x slower than 1,
with a bimodal spread that no number of rounds averages out; ``passive`` removes the collapse).

What is timed. rlft: ``alg.update(batch)`` (critic step, actor + temperature step when due, Polyak update, metrics
to floats). d3rlpy: ``algo.impl.update(torch_batch, grad_step)``, which is everything ``algo.update`` does except
converting the numpy ``TransitionMiniBatch`` to tensors (its cost is measured separately and printed).

Algorithmic differences (from d3rlpy 2.8.1's source, sac_impl.py / ddpg_impl.py / iql_impl.py):

* d3rlpy SAC has no random-subset target: its TD target is the min over all ``n_critics`` target critics (10
  target forwards; rlft RLPD: 2 of 10). The ``rlft sac subset=10`` row does the same as d3rlpy here.
* d3rlpy SAC steps the actor and the temperature on every update (no delay option); rlft defaults to once per
  ``utd_ratio`` (4) updates, so the like-for-like rows use ``actor_update_every=1``.
* d3rlpy SAC's actor loss uses min_i Q_i over all 10 critics (rlft: mean_i Q_i; same 10 forwards) and calls
  ``backward()`` without restricting it to the actor, so it also computes (then discards) weight gradients of all
  10 critics; rlft passes ``inputs=actor_params``.
* d3rlpy uses torch's default Adam (single-tensor for-loop on CPU) and a per-parameter Python loop for the Polyak
  update; rlft uses fused Adam and one ``_foreach_lerp_``.
* d3rlpy's MLP order is Linear -> ReLU -> LayerNorm (rlft: Linear -> LayerNorm -> ReLU): same cost.
* d3rlpy IQL: one optimizer and one backward for Q + V, computes min Qtarget(s, a) and V(s) twice (value loss and
  advantage weights), a non-squashed Gaussian actor with a state-independent log-std; rlft IQL: separate V and Q
  steps, Qtarget and V once, tanh-squashed Gaussian with a state-dependent log-std head, plus a few no-grad
  diagnostics (entropy, mse) in its metrics.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

OBS, ACT, BATCH, HIDDEN = 28, 5, 256, (256, 256, 256)
REPO = Path(__file__).resolve().parents[1]

# name -> (library, algorithm, options). The rlft rows use chunk 1x5 (= action dim 5).
SETUPS: dict[str, tuple[str, str, dict]] = {
    "rlft sac loop, actor every update": ("rlft", "sac", {"impl": "loop", "actor_update_every": 1}),
    "rlft sac batched, actor every update": ("rlft", "sac", {"impl": "batched", "actor_update_every": 1}),
    "rlft sac loop, actor every update, subset=10": (
        "rlft",
        "sac",
        {"impl": "loop", "actor_update_every": 1, "critic_subset": 10},
    ),
    "rlft sac loop, default (actor every 4th)": ("rlft", "sac", {"impl": "loop"}),
    "rlft sac batched, default (actor every 4th)": ("rlft", "sac", {"impl": "batched"}),
    "d3rlpy sac": ("d3rlpy", "sac", {}),
    "rlft iql loop": ("rlft", "iql", {"impl": "loop"}),
    "rlft iql batched": ("rlft", "iql", {"impl": "batched"}),
    "d3rlpy iql": ("d3rlpy", "iql", {}),
}


# ------------------------------------------------------------------------------------------------------------------
# worker side (runs under the rlft or the d3rlpy interpreter)
# ------------------------------------------------------------------------------------------------------------------
def _set_threads(n: int) -> None:
    import torch

    torch.set_num_threads(n)
    try:
        torch.set_num_interop_threads(1)
    except RuntimeError:
        pass


def _build_rlft(algo: str, opts: dict):
    """-> (update(i) callable, info dict)."""
    import dataclasses

    import torch

    sys.path.insert(0, str(REPO))
    from rlft.algos import ALGORITHMS
    from rlft.data.batch import ChunkBatch
    from rlft.policies.config import PolicyConfig

    torch.manual_seed(0)
    cls = ALGORITHMS[algo]
    if algo == "sac":  # 10 critics, target = min over a random subset (default 2 = RLPD)
        overrides = {"num_critics": 10, "critic_subset": opts.get("critic_subset", 2)}
        if "actor_update_every" in opts:
            overrides["actor_update_every"] = opts["actor_update_every"]
    else:
        overrides = {"num_critics": 2}
    cfg = dataclasses.replace(
        cls.Config(),
        critic_impl=opts["impl"],
        critic_hidden_dims=HIDDEN,
        critic_layernorm=True,
        batch_size=BATCH,
        policy=PolicyConfig(kind="gaussian", hidden_dims=HIDDEN, layernorm=True),
        **overrides,
    )
    alg = cls(cfg, OBS, ACT, 1, device="cpu")
    g = torch.Generator().manual_seed(0)
    batches = [ChunkBatch.random(BATCH, OBS, 1, ACT, generator=g) for _ in range(8)]

    def update(i: int) -> None:
        alg.update(batches[i % len(batches)])

    info = {
        "critics": cfg.num_critics,
        "critic_subset": getattr(cfg, "critic_subset", None),
        "actor_update_every": getattr(alg, "actor_update_every", 1),
        "params": sum(p.numel() for p in alg.critic.parameters()) + sum(p.numel() for p in alg.policy.parameters()),
    }
    return update, info


def _build_d3rlpy(algo: str, opts: dict):
    """-> (update(i) callable, info dict)."""
    import logging
    import warnings

    warnings.filterwarnings("ignore")
    import d3rlpy
    import numpy as np
    from d3rlpy.models.encoders import VectorEncoderFactory
    from d3rlpy.torch_utility import TorchMiniBatch

    logging.getLogger().setLevel(logging.WARNING)
    try:  # quieten d3rlpy's structlog output
        import structlog

        structlog.configure(wrapper_class=structlog.make_filtering_bound_logger(logging.WARNING))
    except Exception:  # noqa: BLE001
        pass
    d3rlpy.seed(0)
    enc = VectorEncoderFactory(hidden_units=list(HIDDEN), use_layer_norm=True)
    if algo == "sac":
        cfg = d3rlpy.algos.SACConfig(
            actor_encoder_factory=enc,
            critic_encoder_factory=enc,
            n_critics=10,
            batch_size=BATCH,
            actor_learning_rate=3e-4,
            critic_learning_rate=3e-4,
            temp_learning_rate=3e-4,
            tau=0.005,
            gamma=0.99,
            initial_temperature=0.1,
            compile_graph=False,
        )
    else:
        cfg = d3rlpy.algos.IQLConfig(
            actor_encoder_factory=enc,
            critic_encoder_factory=enc,
            value_encoder_factory=enc,
            n_critics=2,
            batch_size=BATCH,
            actor_learning_rate=3e-4,
            critic_learning_rate=3e-4,
            tau=0.005,
            gamma=0.99,
            expectile=0.7,
            weight_temp=3.0,
            max_weight=100.0,
            compile_graph=False,
        )
    alg = cfg.create(device="cpu:0")
    rng = np.random.default_rng(0)
    n = 5000
    terminals = np.zeros(n, dtype=np.float32)
    terminals[99::100] = 1.0
    dataset = d3rlpy.dataset.MDPDataset(
        observations=rng.standard_normal((n, OBS)).astype(np.float32),
        actions=rng.uniform(-0.9, 0.9, (n, ACT)).astype(np.float32),
        rewards=-rng.random(n).astype(np.float32),
        terminals=terminals,
        action_space=d3rlpy.ActionSpace.CONTINUOUS,
        action_size=ACT,
    )
    alg.build_with_dataset(dataset)
    np_batches = [dataset.sample_transition_batch(BATCH) for _ in range(8)]

    def to_torch(b):
        return TorchMiniBatch.from_batch(
            batch=b,
            gamma=cfg.gamma,
            compute_returns_to_go=alg.need_returns_to_go,
            device=alg._device,
            observation_scaler=cfg.observation_scaler,
            action_scaler=cfg.action_scaler,
            reward_scaler=cfg.reward_scaler,
        )

    t0 = time.perf_counter()
    for _ in range(5):
        torch_batches = [to_torch(b) for b in np_batches]
    convert_ms = (time.perf_counter() - t0) / (5 * len(np_batches)) * 1e3
    assert tuple(torch_batches[0].observations.shape) == (BATCH, OBS)
    assert tuple(torch_batches[0].actions.shape) == (BATCH, ACT)
    impl = alg.impl
    step = [0]

    def update(i: int) -> None:
        impl.update(torch_batches[i % len(torch_batches)], step[0])
        step[0] += 1

    mods = impl.modules
    n_params = sum(p.numel() for p in mods.policy.parameters()) + sum(p.numel() for p in mods.q_funcs.parameters())
    info = {"critics": cfg.n_critics, "convert_ms": convert_ms, "params": n_params, "d3rlpy": d3rlpy.__version__}
    return update, info


def worker(spec: dict) -> None:
    import torch

    _set_threads(spec["threads"])
    lib, algo, opts = spec["lib"], spec["algo"], spec["opts"]
    update, info = (_build_rlft if lib == "rlft" else _build_d3rlpy)(algo, opts)
    for i in range(spec["warmup"]):
        update(i)
    info.update(torch=torch.__version__, threads=torch.get_num_threads(), python=platform.python_version())
    out = sys.stdout
    out.write("ready " + json.dumps(info) + "\n")
    out.flush()
    i = spec["warmup"]
    for line in sys.stdin:
        cmd = line.split()
        if not cmd or cmd[0] == "quit":
            break
        k, max_s = int(cmd[1]), float(cmd[2])
        c0, t0 = time.process_time(), time.perf_counter()
        done = 0
        while done < k and (done < 2 or time.perf_counter() - t0 < max_s):
            update(i)
            i += 1
            done += 1
        wall = time.perf_counter() - t0
        out.write(json.dumps({"wall": wall, "cpu": time.process_time() - c0, "done": done}) + "\n")
        out.flush()


# ------------------------------------------------------------------------------------------------------------------
# parent side
# ------------------------------------------------------------------------------------------------------------------
class Worker:
    def __init__(
        self, name: str, lib: str, algo: str, opts: dict, threads: int, warmup: int, python: str, wait: str = "default"
    ):
        self.name, self.lib, self.algo, self.threads, self.wait = name, lib, algo, threads, wait
        spec = {"lib": lib, "algo": algo, "opts": opts, "threads": threads, "warmup": warmup}
        self.err = tempfile.TemporaryFile(mode="w+")  # a file, not a pipe: a chatty worker can never block on it
        env = dict(os.environ, OMP_NUM_THREADS=str(threads), MKL_NUM_THREADS=str(threads), PYTHONWARNINGS="ignore")
        env.pop("OMP_WAIT_POLICY", None)
        if wait != "default":  # libgomp reads it when torch is imported, so it has to be in the environment
            env["OMP_WAIT_POLICY"] = wait
        self.proc = subprocess.Popen(
            [python, str(Path(__file__).resolve()), "--worker", json.dumps(spec)],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=self.err,
            text=True,
            bufsize=1,
            env=env,
        )
        self.info: dict = {}
        self.rates: list[float] = []
        self.cpu_share: list[float] = []

    @property
    def label(self) -> str:
        return f"{self.threads} thr" + ("" if self.wait == "default" else f", OMP_WAIT_POLICY={self.wait}")

    def stderr_tail(self) -> str:
        self.err.seek(0)
        return self.err.read()[-3000:]

    def wait_ready(self) -> None:
        while True:
            line = self.proc.stdout.readline()
            if not line:
                raise RuntimeError(f"worker '{self.name}' ({self.label}) died:\n{self.stderr_tail()}")
            if line.startswith("ready "):
                self.info = json.loads(line[6:])
                return

    def run(self, k: int, max_s: float) -> None:
        self.proc.stdin.write(f"run {k} {max_s}\n")
        self.proc.stdin.flush()
        line = self.proc.stdout.readline()
        if not line:
            raise RuntimeError(f"worker '{self.name}' ({self.label}) died:\n{self.stderr_tail()}")
        r = json.loads(line)
        self.rates.append(r["done"] / r["wall"])
        self.cpu_share.append(r["cpu"] / r["wall"])

    def close(self) -> None:
        try:
            self.proc.stdin.write("quit\n")
            self.proc.stdin.flush()
            self.proc.wait(timeout=30)
        except Exception:  # noqa: BLE001
            self.proc.kill()


def _load() -> str:
    return subprocess.run(["uptime"], capture_output=True, text=True).stdout.strip()


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--threads", type=int, nargs="+", default=[1], help="torch intra-op thread counts (default 1)")
    p.add_argument(
        "--omp-wait-policy",
        nargs="+",
        default=["default"],
        choices=["default", "passive", "active"],
        help="OMP_WAIT_POLICY of the workers with more than 1 thread (several: one worker per value); 'default' "
        "leaves it unset (libgomp spins before sleeping)",
    )
    p.add_argument("--rounds", type=int, default=7, help="interleaved rounds (median over them)")
    p.add_argument("--updates", type=int, default=20, help="timed updates per worker per round")
    p.add_argument(
        "--max-seconds",
        type=float,
        default=10.0,
        help="stop a timing early after this many seconds (at least 2 updates; the rate is updates done / wall time), "
        "so a pathological setting (2 threads next to a busy process) cannot stall the run",
    )
    p.add_argument("--warmup", type=int, default=10, help="untimed updates per worker before the first round")
    p.add_argument("--d3rlpy-python", default="/tmp/d3venv/bin/python", help="interpreter of a venv with d3rlpy")
    p.add_argument("--only", nargs="*", default=None, help="substrings of setup names to keep")
    p.add_argument("--worker", default=None, help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.worker is not None:
        worker(json.loads(args.worker))
        return

    start = datetime.datetime.now().astimezone()
    load_start = _load()
    print(f"# {start:%Y-%m-%d %H:%M %Z}; load at start: {load_start}", file=sys.stderr, flush=True)
    setups = {k: v for k, v in SETUPS.items() if args.only is None or any(s in k for s in args.only)}
    if any(lib == "d3rlpy" for lib, _, _ in setups.values()) and not Path(args.d3rlpy_python).exists():
        sys.exit(
            f"--d3rlpy-python {args.d3rlpy_python} does not exist: make a separate venv (python -m venv /tmp/d3venv && "
            "/tmp/d3venv/bin/pip install d3rlpy), or pass --only rlft"
        )
    workers: list[Worker] = []
    try:
        for threads in args.threads:
            for wait in args.omp_wait_policy if threads > 1 else ["default"]:
                for name, (lib, algo, opts) in setups.items():
                    python = sys.executable if lib == "rlft" else args.d3rlpy_python
                    workers.append(Worker(name, lib, algo, opts, threads, args.warmup, python, wait))
                    workers[-1].wait_ready()  # build + warm up one at a time, so warm-ups do not compete
                    print(f"  ready: {name} ({workers[-1].label})", file=sys.stderr, flush=True)
        for r in range(args.rounds):
            order = workers[r % len(workers) :] + workers[: r % len(workers)]
            for w in order:
                w.run(args.updates, args.max_seconds)
            summary = ", ".join(f"{w.rates[-1]:.1f}" for w in workers)
            print(f"  round {r + 1}/{args.rounds}: {summary}", file=sys.stderr, flush=True)
    finally:
        for w in workers:
            w.close()
    load_end = _load()
    end = datetime.datetime.now().astimezone()

    med = {(w.name, w.threads, w.wait): statistics.median(w.rates) for w in workers}
    versions = {w.lib: w.info for w in workers}
    d3 = versions.get("d3rlpy", {})
    rl = versions.get("rlft", {})
    print(
        f"\n{start:%Y-%m-%d %H:%M}-{end:%H:%M %Z}, {platform.node()} ({os.cpu_count()} CPUs), torch "
        f"{rl.get('torch', d3.get('torch'))}; d3rlpy {d3.get('d3rlpy', '-')}. updates/s = median over {args.rounds} "
        f"interleaved rounds of {args.updates} updates (or "
        f"{args.max_seconds:g} s, whichever first; after {args.warmup} warm-up). obs {OBS}, action 5 (rlft "
        f"chunk 1x5), batch {BATCH}, MLPs {HIDDEN} + LayerNorm. d3rlpy timed via impl.update(TorchMiniBatch); its "
        f"numpy->torch batch conversion (excluded) costs {d3.get('convert_ms', float('nan')):.2f} ms.\n"
        f"load at start: {load_start}\nload at end:   {load_end}\n"
    )
    print(
        "| implementation | threads (OMP_WAIT_POLICY) | updates/s (median) | ms/update | vs d3rlpy | min-max updates/s | cpu/wall "
        "| params actor+Q |"
    )
    print("|---|---|---|---|---|---|---|---|")
    for w in workers:
        rate = med[(w.name, w.threads, w.wait)]
        ref = med.get((f"d3rlpy {w.algo}", w.threads, w.wait))
        ratio = f"{rate / ref:.2f}x" if ref else "-"
        print(
            f"| {w.name} | {w.threads}{'' if w.wait == 'default' else f' ({w.wait})'} | {rate:.1f} | {1000.0 / rate:.1f} | {ratio} | "
            f"{min(w.rates):.1f}-{max(w.rates):.1f} | {statistics.median(w.cpu_share):.2f} | "
            f"{w.info.get('params', 0) / 1e6:.2f}M |"
        )


if __name__ == "__main__":
    main()
