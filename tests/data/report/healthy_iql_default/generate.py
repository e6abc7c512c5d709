"""SYNTHETIC: writes offline/ and online/ of this fixture (see README.md). Deterministic (numpy seed 0).

Re-run from the repository root with ``python tests/data/report/healthy_iql_default/generate.py``. The series are a
hand-built reconstruction of the *magnitudes* of the reported healthy default pipeline (flow BC 0.20 -> offline IQL
0.30 -> online IQL 0.92; raw TD error 3.82 -> 1.78 in the online stage; advantage weights max ~99-100 at the clip
100, mean ~3 offline and ~5-6 online), shaped after the real recorded default pipeline in ../pipeline_f_s0 (the
same metric names, log intervals, noise levels and ratios between metrics). They are not a recorded run.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
RUN = "/tmp/runs/healthy_default"  # the synthetic run's directory as it would appear in config.yaml
W_AT_CLIP = 100.00000762939453  # float32 exp(log(100)), what IQL logs when every batch of an interval hits the clip


def _r(x: float, nd: int = 6) -> float:
    return float(round(float(x), nd))


def _config(mode: str) -> str:
    online = mode == "online"
    return f"""algo_cfg:
  batch_size: 256
  utd_ratio: 1
  warmup_steps: {1000 if online else 0}
  offline_ratio: {0.5 if online else 0.0}
  explore_noise_scale: 1.0
  policy:
    kind: flow
    hidden_dims:
    - 256
    - 256
    - 256
    layernorm: true
    log_std_min: -5.0
    log_std_max: 2.0
    atanh_eps: 0.01
    velocity_net: mlp
    flow_steps: 10
    unet_dims:
    - 64
    - 128
    - 256
    unet_kernel_size: 5
    time_embed_dim: 64
  expectile: 0.9
  beta: 3.0
  max_weight: 100.0
  num_critics: 2
  critic_hidden_dims:
  - 256
  - 256
  - 256
  critic_layernorm: true
  critic_impl: auto
  actor_lr: 0.0003
  critic_lr: 0.0003
  value_lr: 0.0003
  tau: 0.005
algo: iql
mode: {mode}
steps: {80000 if online else 5000}
dataset: {RUN}/data/dataset.h5
init_policy: {RUN}/{'offline' if online else 'bc'}/checkpoints/policy_final.safetensors
init_critic: {RUN + '/offline/checkpoints/state.pt' if online else 'null'}
replay_capacity: 200000
policy_ema: 0.999
env:
  env_id: cube-single-singletask-v0
  act_horizon: 5
  obs_horizon: 1
  gamma: 0.99
  max_episode_steps: null
eval:
  num_episodes: 50
  every: 0
  seed: 100000
  deterministic: true
  num_workers: 1
  parallel_envs: 4
run:
  out_dir: {RUN}
  name: {mode}
  seed: 0
  threads: 1
  device: cpu
  log_every: {500 if online else 1000}
  checkpoint_every: 0
  resume: false
  track: false
  wandb_project: rlft
  tensorboard: true
"""


def _eval(success: float, length: float, eval_s: float) -> dict:
    return {"eval/success_once": success, "eval/success_at_end": success, "eval/return": _r(-length + success, 2),
            "eval/episode_length": length, "eval/num_episodes": 50.0, "time/eval_s": eval_s,
            "eval/best_success_once": success}


def _write(mode: str, records: list[dict], final: dict, steps: int, wall: float) -> None:
    d = HERE / mode
    d.mkdir(exist_ok=True)
    (d / "config.yaml").write_text(_config(mode))
    (d / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records))
    summary = {"run_dir": f"{RUN}/{mode}", "algo": "iql", "mode": mode, "steps": steps, "wall_s": wall,
               "final": final, "best_success_once": final["eval/success_once"]}
    (d / "summary.json").write_text(json.dumps(summary, indent=2) + "\n")


def offline(rng: np.random.Generator) -> None:
    # a critic initialised near 0 grows to the return scale (targets -16 -> -56): the raw TD error rises with it
    # while the relative TD error stays ~2%; the weights sharpen as the critic learns (max at the clip, mean ~3)
    td = [0.41, 0.57, 0.80, 1.02, 1.19]
    tgt = [-16.31, -31.77, -42.58, -50.26, -55.98]
    wmax = [29.14, 88.41, 98.63, 99.31, 99.58]
    wmean = [0.97, 1.81, 2.66, 3.12, 3.31]
    adv = [-0.16, -0.47, -0.78, -1.00, -1.09]
    flow = [0.33, 0.76, 1.02, 1.17, 1.21]
    recs = []
    for k in range(5):
        q = tgt[k] + rng.normal(0.09, 0.03)
        recs.append({
            "step": 1000 * (k + 1), "time": _r(31.9 + 24.1 * k, 3),
            "actor/bc_loss": _r(0.34 + rng.normal(0, 0.015)), "actor/flow_loss": _r(flow[k]),
            "critic/value_loss": _r([0.024, 0.21, 0.57, 0.88, 1.19][k] * rng.lognormal(0, 0.03)),
            "critic/v_mean": _r(q + [3.9, 3.0, 2.4, 2.1, 1.85][k]),
            "critic/critic_loss": _r(6.6 * td[k] ** 2 * rng.lognormal(0, 0.03)),
            "critic/q_mean": _r(q), "critic/q_std": _r([0.056, 0.11, 0.17, 0.24, 0.28][k]),
            "critic/td_error": td[k], "critic/td_target_mean": tgt[k],
            "actor/actor_loss": _r(flow[k]), "actor/iql_weights_mean": wmean[k], "actor/iql_weights_max": wmax[k],
            "actor/iql_advantage_mean": adv[k], "time/updates_per_s": _r(41.5 if k else 31.0),
        })
    final = _eval(0.30, 172.2, 17.4)
    recs.append({"step": 5000, "time": 148.1, **final})
    _write("offline", recs, final, 5000, 148.1)


def online(rng: np.random.Generator) -> None:
    # log points: step 500 (warm-up, no update yet), then every ~500 env steps from 1000 to 80000
    steps = [1000 + 500 * k + (0 if k == 0 else int(rng.choice([0, 1, 2, 4]))) for k in range(158)] + [80000]
    n = len(steps)
    x = np.asarray(steps, dtype=float)
    # TD error: the inherited offline critic (1.19 at its end) meets the policy's own rollouts -- 3.82 at the first
    # online log, still rising to 4.05 as online chunks fill half of each batch, back to ~1.6 within ~3k env steps,
    # then a noisy plateau drifting up to ~1.8 as the replay and the policy keep changing; last value 1.78
    head = [3.82, 4.05, 3.31, 2.52, 2.01, 1.74, 1.62]
    plateau = 1.58 + 0.2 * (x - x[len(head)]) / (x[-1] - x[len(head)])
    td = plateau * rng.lognormal(0.0, 0.035, n)
    td[: len(head)] = head
    td[-1] = 1.78
    # TD targets: -55 at the hand-off, drifting to ~-60 while the policy still fails, then less negative as the online
    # half of each batch succeeds more often (success 0.92 at the end): the relative TD error rises 2.8% -> 3.6%
    tgt = -55.2 - 5.0 * np.clip(x / 20000, 0, 1) + 12.0 * np.clip((x - 25000) / 55000, 0, 1) ** 1.3
    tgt = tgt + rng.normal(0, 0.15, n)
    succ20 = np.clip(0.92 / (1 + np.exp(-(x - 40000) / 7000)) - 0.02, 0, 1)  # last-20-episode success
    ep_len = 200 - 100 * succ20
    wmean = 5.3 + 0.7 * np.clip((x - 10000) / 60000, 0, 1) + rng.normal(0, 0.18, n)
    wmean[:4] = [10.89, 7.02, 5.96, 5.41]
    wmax = np.where(rng.random(n) < 0.75, W_AT_CLIP, 100 - rng.exponential(0.25, n))
    wmax[:2] = W_AT_CLIP
    recs = [{"step": 500, "time": 2.05, "train/episodes": 2.0, "time/updates": 0.0, "time/env_steps_per_s": 356.6,
             "train/episode_success": 0.0, "train/episode_return": -200.0}]
    episodes, t = 2.0, 2.05
    for k in range(n):
        qstd = 0.46 + 0.1 * x[k] / x[-1] + rng.normal(0, 0.01)
        if k < 3:
            qstd = [0.84, 0.53, 0.47][k]
        q = tgt[k] + rng.normal(0.04, 0.02)
        adv = -(0.31 * wmean[k] - 0.1) + rng.normal(0, 0.03)
        flow = 1.6 + 0.35 * x[k] / x[-1] + rng.normal(0, 0.05) if k >= 3 else [5.03, 2.51, 1.87][k]
        episodes += 500 / ep_len[k]
        t += 500 / (150 + 10 * rng.random())
        recs.append({
            "step": steps[k], "time": _r(t, 3),
            "actor/bc_loss": _r(0.377 if k == 0 else 0.318 + rng.normal(0, 0.008)), "actor/flow_loss": _r(flow),
            "critic/value_loss": _r((1.05 * td[k] if k >= 2 else [6.92, 3.07][k]) * rng.lognormal(0, 0.05)),
            "critic/v_mean": _r(q + 1.7 + rng.normal(0, 0.05)),
            "critic/critic_loss": _r((5.0 if k else 5.6) * td[k] ** 2 * rng.lognormal(0, 0.05)),
            "critic/q_mean": _r(q), "critic/q_std": _r(qstd), "critic/td_error": _r(td[k]),
            "critic/td_target_mean": _r(tgt[k]), "actor/actor_loss": _r(flow),
            "actor/iql_weights_mean": _r(wmean[k]), "actor/iql_weights_max": float(wmax[k]) if wmax[k] == W_AT_CLIP
            else _r(wmax[k]), "actor/iql_advantage_mean": _r(adv if k else -2.28),
            "train/episodes": float(int(episodes)), "time/updates": float(1 if k == 0 else (steps[k] - 1000) // 5),
            "time/env_steps_per_s": _r(150 + 10 * rng.random(), 3),
            "train/episode_success": _r(succ20[k] if steps[k] > 3000 else 0.0, 4),
            "train/episode_return": _r(-ep_len[k] + succ20[k] if steps[k] > 3000 else -200.0, 2),
        })
    final = _eval(0.92, 108.4, 14.2)
    recs.append({"step": 80000, "time": _r(t + 14.6, 3), **final})
    _write("online", recs, final, 80000, _r(t + 14.6, 3))


if __name__ == "__main__":
    rng = np.random.default_rng(0)
    offline(rng)
    online(rng)
