"""``rlft train``: one stage, offline (gradient steps on a dataset) or online (env interaction + replay).

The loop is the same for every algorithm: it reads ``AlgoConfig`` fields (batch_size, utd_ratio, warmup_steps,
offline_ratio; rollout_steps > 0 for on-policy algorithms) and calls ``algo.update(batch)`` / ``algo.explore(obs)``.
With ``TrainConfig.base_policy`` the actor acts through a frozen policy; what differs (the actor's space, the env
wrapper, the offline relabelling, the replay's extra fields, the composite that is saved) belongs to one action-space
adapter (``rlft.train.adapters``): DSRL's latent noise (``base_mode: noise``, saved as ``SteeredFlowPolicy``) or a
per-step residual (``base_mode: residual``, saved as ``ResidualPolicy``). Outputs in the run directory:

* ``config.yaml`` (resolved config), ``metrics.jsonl``, ``tb/`` (TensorBoard), ``summary.json`` (final numbers);
* ``checkpoints/policy_final.safetensors``, ``policy_best.safetensors`` (best ``eval/success_once``),
  ``state.pt`` (full resumable state: algorithm incl. optimisers, step, RNG, replay buffer, policy EMA).

With ``TrainConfig.policy_ema`` > 0 the evaluated and saved policy is an EMA of the trained weights (``rlft.train.ema``).
Every file is written atomically.
"""

from __future__ import annotations

import json
import math
import time
from pathlib import Path

import numpy as np
import torch
from rich.console import Console
from rich.markup import escape

from rlft.algos import get_algorithm
from rlft.config import save_yaml, to_dict
from rlft.data.dataset import ChunkDataset
from rlft.data.h5io import load_dataset_for_env
from rlft.data.mixer import MixedSampler
from rlft.data.replay import ReplayBuffer
from rlft.envs import env_info, make_env
from rlft.envs.residual import residual_bound
from rlft.errors import CheckpointError, ConfigError, TrainingError
from rlft.policies import load_policy
from rlft.train.adapters import make_adapter, split_composite
from rlft.train.config import TrainConfig
from rlft.train.ema import PolicyEMA
from rlft.train.evaluate import Evaluator, evaluate_policy
from rlft.train.logger import Logger, MetricAverager
from rlft.utils import atomic_path, atomic_write_text, make_console, resolve_device, seed_everything, set_threads

console = make_console()


def _run_dir(cfg: TrainConfig) -> Path:
    name = cfg.run.name or f"{cfg.algo}-{cfg.env.env_id}-s{cfg.run.seed}-{time.strftime('%Y%m%d-%H%M%S')}"
    return Path(cfg.run.out_dir) / name


def _check_finite(metrics: dict[str, float], step: int) -> None:
    for k, v in metrics.items():
        if not math.isfinite(v):
            raise TrainingError(f"metric '{k}' became {v} at step {step}; training diverged (lower the learning "
                                f"rate or check the data)")


def _check_policy_matches(policy, obs_dim: int, action_dim: int, act_horizon: int, source: str) -> None:
    got = (policy.obs_dim, policy.action_dim, policy.act_horizon)
    want = (obs_dim, action_dim, act_horizon)
    if got != want:
        raise CheckpointError(
            f"{source}: policy has (obs_dim, action_dim, act_horizon) = {got} but the env/config needs {want}"
        )


class Trainer:
    """Builds everything a stage needs from a TrainConfig, then ``run()``."""

    def __init__(self, cfg: TrainConfig, run_dir: str | Path | None = None, quiet: bool = False):
        self.cfg = cfg
        self.quiet = quiet
        set_threads(cfg.run.threads)
        self.gen = seed_everything(cfg.run.seed)
        self.device = resolve_device(cfg.run.device)
        self.run_dir = Path(run_dir) if run_dir else _run_dir(cfg)
        self.ckpt_dir = self.run_dir / "checkpoints"
        if cfg.mode == "offline" and not cfg.dataset:
            raise ConfigError("dataset: an offline stage needs a dataset file")
        algo_cls = get_algorithm(cfg.algo)
        ac = cfg.algo_cfg
        if cfg.mode == "online" and ac.rollout_steps > 0 and (ac.offline_ratio > 0 or ac.rollout_steps > cfg.replay_capacity):
            raise ConfigError(f"algo_cfg.rollout_steps: an on-policy rollout of {ac.rollout_steps} macro-steps needs "
                              f"offline_ratio 0 and replay_capacity >= rollout_steps ({cfg.replay_capacity})")
        if cfg.mode == "online" and ac.offline_ratio > 0 and not cfg.dataset:
            raise ConfigError(f"dataset: algo_cfg.offline_ratio={ac.offline_ratio} needs an offline dataset file")

        data_h = ac.data_horizon(cfg.env.act_horizon)  # action steps per training chunk (> H for DQC's chunk critic)
        if cfg.mode == "online" and data_h != cfg.env.act_horizon:
            raise ConfigError(f"mode: {cfg.algo} trains on {data_h}-step chunks but online replay holds the executed "
                              f"{cfg.env.act_horizon}-step chunks (env.act_horizon); run it in offline mode")

        # environment dims
        env_kw = {} if cfg.env.max_episode_steps is None else {"max_episode_steps": cfg.env.max_episode_steps}
        probe = make_env(cfg.env.env_id, obs_horizon=cfg.env.obs_horizon, **env_kw)
        info = env_info(probe)
        probe.close()
        self.obs_dim, self.action_dim, H = info["obs_dim"], info["action_dim"], cfg.env.act_horizon
        self.env_kw = env_kw

        # the frozen base policy (DSRL / residual RL) and the actor this stage trains, pretrained or fresh
        base, policy, mode, settings = None, None, cfg.base_mode, {}
        if cfg.init_policy:
            loaded = load_policy(cfg.init_policy)
            _check_policy_matches(loaded, self.obs_dim, self.action_dim, H, cfg.init_policy)
            base, policy, saved_mode, settings = split_composite(loaded)  # a composite brings its frozen base policy
            if saved_mode is not None and saved_mode != cfg.base_mode:
                raise ConfigError(f"base_mode: {cfg.init_policy} is a {saved_mode} composite; set base_mode "
                                  f"{saved_mode} to continue it")
        if cfg.base_policy:
            if policy is not None and base is None:
                raise ConfigError("init_policy: with base_policy set, init_policy must be a composite of the same "
                                  "kind (its actor is continued) or unset")
            base = load_policy(cfg.base_policy, map_location=self.device)
            _check_policy_matches(base, self.obs_dim, self.action_dim, H, cfg.base_policy)
        if base is not None:
            base.to(self.device).requires_grad_(False).eval()
        episodes, bound = None, None
        if base is not None and mode == "residual":  # the bound is sized by the dataset's actions
            episodes = load_dataset_for_env(cfg.dataset, info, cfg.clip_dataset_actions)[0] if cfg.dataset else None
            bound = residual_bound(cfg.residual_scale, cfg.residual_unit, info["action_low"], info["action_high"],
                                   None if episodes is None else np.concatenate([e.actions for e in episodes]))
            if "residual_bound" in settings and not np.allclose(settings["residual_bound"], bound, rtol=1e-4):
                raise ConfigError(f"residual_scale/residual_unit: they give the bound {bound.tolist()}, but "
                                  f"{cfg.init_policy} was trained with {settings['residual_bound']}")
        self.adapter = adapter = make_adapter(mode, base, self.obs_dim, self.action_dim, H, cfg.action_magnitude,
                                              bound)
        act_h, act_dim = adapter.act_horizon, adapter.action_dim
        if base is not None and not adapter.offline_data and (cfg.mode == "offline" or ac.offline_ratio > 0) \
                and not algo_cls.uses_base_policy:
            raise ConfigError(f"base_policy: the dataset holds env actions, not latent noise, so {cfg.algo} cannot "
                              f"learn from it in the noise space; run it online with offline_ratio 0")
        if policy is None:
            policy = adapter.fresh_actor(ac.policy)
        elif base is not None:
            adapter.check_actor(policy, f"{cfg.init_policy} (actor)")
        stats_from = base if base is not None else (policy if cfg.init_policy else None)  # whose statistics data use
        if episodes is None and cfg.dataset:
            episodes, _ = load_dataset_for_env(cfg.dataset, info, cfg.clip_dataset_actions)
        self.dataset = None
        if episodes is not None:
            o, a = episodes[0].obs.shape[1] * cfg.env.obs_horizon, episodes[0].actions.shape[1]
            if (o, a) != (self.obs_dim, self.action_dim):
                raise ConfigError(f"dataset {cfg.dataset}: obs/action dims ({o}, {a}) do not match env "
                                  f"{cfg.env.env_id} ({self.obs_dim}, {self.action_dim})")
            low, high = info["action_low"], info["action_high"]
            if adapter.data_obs_horizon is not None:  # data in the actor's own space (residual: delta, base action)
                episodes = adapter.actor_episodes(episodes, cfg.env.obs_horizon)
                data_h, obs_h, stats_from, low, high = act_h, adapter.data_obs_horizon, policy, -1.0, 1.0
            else:
                obs_h = cfg.env.obs_horizon
            ds = ChunkDataset(episodes, act_horizon=data_h, gamma=cfg.env.gamma, obs_horizon=obs_h,
                              normalizer=stats_from.normalizer if stats_from is not None else None, device=self.device,
                              act_low=low, act_high=high)
            if stats_from is None:
                policy.normalizer.load_state_dict(ds.normalizer.state_dict())
                ds.normalizer = policy.normalizer
            self.dataset = ds
        elif stats_from is None:
            low, high = info["action_low"], info["action_high"]
            policy.normalizer.set_stats(np.zeros(self.obs_dim), np.ones(self.obs_dim), low, high)
        if algo_cls.uses_base_policy and base is None:
            raise ConfigError(f"base_policy: {cfg.algo} steers a frozen base policy; set base_policy (or init_policy "
                              f"to a steered policy)")
        if algo_cls.needs_pretrained_critic and not cfg.init_critic:
            raise ConfigError(f"init_critic: {cfg.algo} needs pretrained critics (a previous stage's "
                              f"checkpoints/state.pt)")
        algo_kw = {"base_policy": base} if algo_cls.uses_base_policy else {}
        self.algo = algo_cls(ac, adapter.obs_dim, act_dim, act_h, policy=policy, device=self.device, **algo_kw)
        self.base_policy = base
        # the deployable artifact: the composite (frozen base + trained actor) when acting through a base policy
        live = adapter.compose(self.algo.policy)
        # what is evaluated and saved: the live policy, or an EMA of its weights (TrainConfig.policy_ema)
        self.ema = PolicyEMA(live, cfg.policy_ema) if cfg.policy_ema != 0 else None
        self.policy = live if self.ema is None else self.ema.policy
        if cfg.init_critic:
            self._warm_start(cfg.init_critic)
        self.step = 0
        self.best = -1.0
        self._eval_step = -1  # env/update step of the latest evaluation
        self.replay: ReplayBuffer | None = None
        if cfg.mode == "online":
            self.replay = ReplayBuffer(cfg.replay_capacity, adapter.obs_dim, act_h, act_dim,
                                       self.algo.policy.normalizer, device=self.device, **adapter.replay_fields())
        self.evaluator: Evaluator | None = None

    def _warm_start(self, path: str) -> None:
        p = Path(path)
        if not p.is_file():
            raise CheckpointError(f"init_critic: training state not found: {p}")
        try:
            state = torch.load(p, map_location=self.device, weights_only=False)["algo"]
        except Exception as e:
            raise CheckpointError(f"init_critic: {p} is not a readable training state ({e})") from None
        loaded = self.algo.load_pretrained(state)
        if not loaded:
            raise CheckpointError(f"init_critic: no network in {p} matches {self.cfg.algo}'s networks by name/shape")
        self._print(f"warm-started {', '.join(loaded)} from {p}")

    # ---------------- persistence ----------------
    def _extra(self, tag: str) -> dict:
        return {"env_id": self.cfg.env.env_id, "algo": self.cfg.algo, "stage_step": self.step, "tag": tag,
                "obs_horizon": self.cfg.env.obs_horizon, "gamma": self.cfg.env.gamma}

    def save_state(self) -> None:
        state = {"algo": self.algo.state_dict(), "step": self.step, "best": self.best,
                 "torch_rng": torch.get_rng_state(), "gen": self.gen.get_state(), "np_rng": np.random.get_state()}
        if self.replay is not None:
            state["replay"] = self.replay.state_dict()
        if self.ema is not None:
            state["policy_ema"] = self.ema.state_dict()
        with atomic_path(self.ckpt_dir / "state.pt") as tmp:
            torch.save(state, tmp)

    def load_state(self) -> None:
        path = self.ckpt_dir / "state.pt"
        if not path.is_file():
            raise CheckpointError(f"run.resume: no checkpoint to resume at {path}")
        try:
            state = torch.load(path, map_location=self.device, weights_only=False)
        except Exception as e:
            raise CheckpointError(f"{path}: unreadable checkpoint ({e})") from None
        self.algo.load_state_dict(state["algo"])
        self.step, self.best = int(state["step"]), float(state["best"])
        torch.set_rng_state(state["torch_rng"])
        self.gen.set_state(state["gen"])
        np.random.set_state(state["np_rng"])
        if self.replay is not None and "replay" in state:
            self.replay.load_state_dict(state["replay"])
        if self.ema is not None:
            if "policy_ema" not in state:
                raise CheckpointError(f"{path}: policy_ema={self.cfg.policy_ema} but the checkpoint holds no EMA policy "
                                      f"(the run was started without it)")
            self.ema.load_state_dict(state["policy_ema"])

    # ---------------- evaluation ----------------
    def evaluate(self) -> dict[str, float]:
        e = self.cfg.eval
        if self.evaluator is None and e.num_workers <= 1:
            self.evaluator = Evaluator(self.cfg.env.env_id, self.cfg.env.gamma,
                                       self.cfg.env.obs_horizon, self.cfg.env.max_episode_steps,
                                       n_parallel=min(e.parallel_envs, e.num_episodes), video=e.video_spec())
        t0 = time.time()
        summary, _ = evaluate_policy(self.policy, self.cfg.env.env_id, e.num_episodes,
                                     e.seed, self.cfg.env.gamma, self.cfg.env.obs_horizon,
                                     self.cfg.env.max_episode_steps, e.deterministic, e.num_workers, self.evaluator,
                                     video=e.video_spec(), video_dir=self.run_dir / "videos",
                                     video_prefix=f"step{self.step:07d}_")
        summary["time/eval_s"] = time.time() - t0
        self._eval_step = self.step
        if summary["eval/success_once"] > self.best:
            self.best = summary["eval/success_once"]
            self.policy.save(self.ckpt_dir / "policy_best.safetensors", self._extra("best"))
        summary["eval/best_success_once"] = self.best
        return summary

    def _live_diagnosis(self):
        """Logger hook: a one-line warning (stderr) the first time each rlft.report.diagnose rule fires."""
        from rlft.report.diagnose import LiveDiagnosis
        from rlft.train.logger import read_metrics

        ctx = {"algo": self.cfg.algo, "mode": self.cfg.mode, "algo_cfg": to_dict(self.cfg.algo_cfg),
               "act_horizon": self.adapter.act_horizon, "action_dim": self.adapter.action_dim,
               "gamma": self.cfg.env.gamma,
               "init_policy": self.cfg.init_policy}
        warn = Console(stderr=True, soft_wrap=True)

        def warn_line(f) -> None:
            warn.print(f"[yellow]warning[/yellow] {escape(f'[{self.cfg.algo}]')} {escape(f.one_line())} -- rlft report "
                       f"{self.run_dir} explains", highlight=False)

        return LiveDiagnosis(ctx, warn_line, history=read_metrics(self.run_dir) if self.cfg.run.resume else None)

    def _print(self, msg: str) -> None:
        if not self.quiet:
            console.print(msg)

    # ---------------- loops ----------------
    def run(self) -> dict:
        cfg = self.cfg
        if cfg.run.resume:
            self.load_state()
        elif (self.run_dir / "metrics.jsonl").exists():
            raise ConfigError(f"run.name: run directory {self.run_dir} already holds a run; pick another name or "
                              f"pass --run.resume")
        self.run_dir.mkdir(parents=True, exist_ok=True)
        save_yaml(cfg, self.run_dir / "config.yaml")
        self.logger = Logger(self.run_dir, cfg.run.tensorboard, cfg.run.track, cfg.run.wandb_project,
                             self.run_dir.name, to_dict(cfg))
        self.logger.hooks.append(self._live_diagnosis())
        t0 = time.time()
        try:
            last_eval = self._online() if cfg.mode == "online" else self._offline()
            if cfg.eval.num_episodes > 0 and (last_eval is None or self._eval_step != self.step):  # may be final
                last_eval = self.evaluate()
                self.logger.log(self.step, last_eval)
        finally:
            self.logger.close()
        self.policy.save(self.ckpt_dir / "policy_final.safetensors", self._extra("final"))
        if not (self.ckpt_dir / "policy_best.safetensors").exists():
            self.policy.save(self.ckpt_dir / "policy_best.safetensors", self._extra("best"))
        self.save_state()
        summary = {"run_dir": str(self.run_dir), "algo": cfg.algo, "mode": cfg.mode, "steps": self.step,
                   "wall_s": time.time() - t0, "final": last_eval, "best_success_once": self.best}
        atomic_write_text(self.run_dir / "summary.json", json.dumps(summary, indent=2))
        if self.evaluator is not None:
            self.evaluator.close()
        return summary

    def _progress(self, desc: str):
        from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

        return Progress(TextColumn(desc), BarColumn(), MofNCompleteColumn(), TimeRemainingColumn(),
                        TextColumn("{task.fields[info]}"), console=console, disable=self.quiet, transient=False)

    def _maybe_eval_and_ckpt(self, prev_step: int, avg: MetricAverager, extra_log: dict) -> dict | None:
        cfg, out = self.cfg, None
        crossed = lambda every: every > 0 and (self.step // every) > (prev_step // every)  # noqa: E731
        if crossed(cfg.run.log_every):
            m = avg.pop()
            m.update(extra_log)
            self.logger.log(self.step, m)
        if cfg.eval.num_episodes > 0 and crossed(cfg.eval.every):
            out = self.evaluate()
            self.logger.log(self.step, out)
            self._print(f"[{cfg.algo}] step {self.step}: success_once {out['eval/success_once']:.2f} "
                        f"success_at_end {out['eval/success_at_end']:.2f} return {out['eval/return']:.1f}")
        if crossed(cfg.run.checkpoint_every):
            self.save_state()
        return out

    def _update(self, batch) -> dict[str, float]:
        """One algorithm update (metrics checked finite), then the policy EMA's."""
        metrics = self.algo.update(batch)
        try:
            _check_finite(metrics, self.step)
        except TrainingError:
            self.logger.log(self.step, metrics)  # the diverged update's metrics, so `rlft report` can show them
            raise
        if self.ema is not None:
            self.ema.update()
        return metrics

    def _offline(self) -> dict | None:
        cfg, ac = self.cfg, self.cfg.algo_cfg
        avg, last_eval = MetricAverager(), None
        t_last, n_last = time.time(), self.step
        with self._progress(f"{cfg.algo} offline") as prog:
            task = prog.add_task("train", total=cfg.steps, completed=self.step, info="")
            while self.step < cfg.steps:
                batch = self.dataset.sample(ac.batch_size, self.gen).to(self.device)
                avg.add(self._update(batch))
                prev, self.step = self.step, self.step + 1
                extra = {}
                if cfg.run.log_every and self.step % cfg.run.log_every == 0:
                    now = time.time()
                    extra["time/updates_per_s"] = (self.step - n_last) / max(now - t_last, 1e-9)
                    t_last, n_last = now, self.step
                ev = self._maybe_eval_and_ckpt(prev, avg, extra)
                last_eval = ev or last_eval
                if self.step % 100 == 0 or self.step == cfg.steps:
                    prog.update(task, completed=self.step, info=f"best {self.best:.2f}" if self.best >= 0 else "")
        return last_eval

    def _online(self) -> dict | None:
        cfg, ac = self.cfg, self.cfg.algo_cfg
        env = self.adapter.wrap_env(make_env(cfg.env.env_id, obs_horizon=cfg.env.obs_horizon, **self.env_kw),
                                    cfg.env.gamma)
        sampler = MixedSampler(self.dataset if ac.offline_ratio > 0 else None, self.replay, ac.offline_ratio)
        avg, last_eval = MetricAverager(), None
        episode = 0
        obs, _ = env.reset(seed=cfg.run.seed * 1_000_003 + self.step)
        ep_ret, ep_success, ep_len = 0.0, False, 0
        recent: list[tuple[float, float]] = []
        t_start, updates = time.time(), 0
        with self._progress(f"{cfg.algo} online") as prog:
            task = prog.add_task("env steps", total=cfg.steps, completed=self.step, info="")
            while self.step < cfg.steps:
                chunk = self.algo.explore(obs).cpu()
                next_obs, R, term, trunc, info = env.step(chunk.numpy())
                decoded = self.adapter.exec_chunk(info)  # the executed env chunk when the action is latent noise
                self.replay.add(np.asarray(obs)[None], chunk[None].numpy(), np.array([R]), np.asarray(next_obs)[None],
                                np.array([float(term)]), np.array([info["discount"]]), np.array([info["k"]]),
                                exec_chunk=None if decoded is None else np.asarray(decoded)[None])
                prev, self.step = self.step, self.step + int(info["k"])
                ep_ret += float(np.sum(info["env_rewards"]))
                ep_success = ep_success or bool(info["success"])
                ep_len += int(info["k"])
                if term or trunc:
                    recent = (recent + [(float(ep_success), ep_ret)])[-20:]
                    episode += 1
                    obs, _ = env.reset(seed=cfg.run.seed * 1_000_003 + self.step)
                    ep_ret, ep_success, ep_len = 0.0, False, 0
                else:
                    obs = next_obs
                if ac.rollout_steps > 0:  # on-policy (PPO): one update per full rollout, which is then discarded
                    if len(self.replay) >= ac.rollout_steps:
                        avg.add(self._update(self.replay.ordered().to(self.device)))
                        updates += 1
                        self.replay.clear()
                elif self.step >= ac.warmup_steps and len(self.replay) > 0:
                    for _ in range(ac.utd_ratio):
                        avg.add(self._update(sampler.sample(ac.batch_size, self.gen).to(self.device)))
                        updates += 1
                extra = {"train/episodes": float(episode), "time/updates": float(updates),
                         "time/env_steps_per_s": self.step / max(time.time() - t_start, 1e-9)}
                if recent:
                    extra["train/episode_success"] = float(np.mean([r[0] for r in recent]))
                    extra["train/episode_return"] = float(np.mean([r[1] for r in recent]))
                ev = self._maybe_eval_and_ckpt(prev, avg, extra)
                last_eval = ev or last_eval
                prog.update(task, completed=min(self.step, cfg.steps),
                            info=f"ep {episode} succ(20) {extra.get('train/episode_success', 0):.2f}")
        env.close()
        return last_eval


def run_train(cfg: TrainConfig, run_dir: str | Path | None = None, quiet: bool = False) -> dict:
    return Trainer(cfg, run_dir, quiet).run()
