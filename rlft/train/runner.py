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

from rlft.config import save_yaml, to_dict
from rlft.data.mixer import MixedSampler
from rlft.data.obs import Obs
from rlft.envs import make_env
from rlft.errors import CheckpointError, ConfigError, TrainingError
from rlft.rollout import Evaluator, evaluate_policy
from rlft.train.config import TrainConfig
from rlft.train.ema import PolicyEMA
from rlft.train.logger import Logger, MetricAverager
from rlft.train.stage import build_stage
from rlft.utils import atomic_path, atomic_write_text, make_console, resolve_device, seed_everything, set_threads

console = make_console()


def _run_dir(cfg: TrainConfig) -> Path:
    name = cfg.run.name or f"{cfg.algo}-{cfg.env.env_id}-s{cfg.run.seed}-{time.strftime('%Y%m%d-%H%M%S')}"
    return Path(cfg.run.out_dir) / name


def _check_finite(metrics: dict[str, float], step: int) -> None:
    for k, v in metrics.items():
        if not math.isfinite(v):
            raise TrainingError(
                f"metric '{k}' became {v} at step {step}; training diverged (lower the learning rate or check the data)"
            )


def nonfinite_tensors(obj, prefix: str = "") -> list[str]:
    """Names (dotted paths) of the floating-point tensors in a nested dict/list/tuple of tensors that hold a NaN or
    an infinity."""
    if isinstance(obj, torch.Tensor):
        return [prefix] if obj.is_floating_point() and not bool(torch.isfinite(obj).all()) else []
    items = obj.items() if isinstance(obj, dict) else enumerate(obj) if isinstance(obj, (list, tuple)) else ()
    return [n for k, v in items for n in nonfinite_tensors(v, f"{prefix}.{k}" if prefix else str(k))]


RESUME_MAY_CHANGE = (
    "steps",
    "run.resume",
    "run.name",
    "run.out_dir",
    "run.log_every",
    "run.checkpoint_every",
    "run.threads",
    "run.device",
    "run.track",
    "run.wandb_project",
    "run.wandb_group",
    "run.tensorboard",
    "run.stop_on_divergence",
    "eval.num_workers",
    "eval.parallel_envs",
)
"""Settings a resumed run may change (``Trainer._check_resume_config``): how long, where the run directory now lies
(it may have been moved or copied), how it is logged and computed -- nothing that changes what is learned from
what."""


def _config_diff(old, new, prefix: str = "") -> list[tuple[str, object, object]]:
    """``(dotted key, old, new)`` for every leaf that differs between two nested config dicts (lists compare whole;
    a tuple read back from YAML as a list compares equal)."""
    if isinstance(old, dict) and isinstance(new, dict):
        return [
            d
            for k in sorted(set(old) | set(new), key=str)
            for d in _config_diff(old.get(k), new.get(k), f"{prefix}.{k}" if prefix else str(k))
        ]
    norm = lambda v: list(v) if isinstance(v, (list, tuple)) else v  # noqa: E731
    return [] if norm(old) == norm(new) else [(prefix, old, new)]


def load_training_state(path: str | Path, device, field: str = "run.resume") -> dict:
    """Read a ``state.pt`` with ``torch.load(weights_only=True)``: tensors and plain containers only, so a crafted
    file cannot run code (pickle's arbitrary objects are refused). Errors name ``field`` and the file."""
    try:
        state = torch.load(path, map_location=device, weights_only=True)
    except Exception as e:
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise CheckpointError(
            f"{field}: {path} is not a readable rlft training state (it may be corrupt, written by "
            f"an older rlft, or hold objects other than tensors, which are never unpickled: "
            f"{first})"
        ) from None
    if not isinstance(state, dict) or not {"algo", "step", "best"} <= set(state):
        raise CheckpointError(f"{field}: {path} is not an rlft training state (no algo/step/best entries)")
    return state


class Trainer:
    """Builds everything a stage needs from a TrainConfig, then ``run()``."""

    def __init__(self, cfg: TrainConfig, run_dir: str | Path | None = None, quiet: bool = False):
        self.cfg = cfg
        self.quiet = quiet
        set_threads(cfg.run.threads)
        torch.set_flush_denormal(cfg.run.flush_denormal)  # a no-op (False) where the CPU cannot
        self.gen = seed_everything(cfg.run.seed)
        self.device = resolve_device(cfg.run.device)
        self.run_dir = Path(run_dir) if run_dir else _run_dir(cfg)
        self.ckpt_dir = self.run_dir / "checkpoints"
        stage = build_stage(cfg, self.device)
        self.env_kw, self.adapter = stage.env_kwargs, stage.adapter
        self.algo, self.dataset, self.replay = stage.algo, stage.dataset, stage.replay
        # what is evaluated and saved: the deployable policy, or an EMA of its weights (TrainConfig.policy_ema)
        self.ema = PolicyEMA(stage.policy, cfg.policy_ema) if cfg.policy_ema != 0 else None
        self.policy = stage.policy if self.ema is None else self.ema.policy
        if cfg.init_critic:
            self._warm_start(cfg.init_critic)
        # the rewards seen so far (data, then env): with gamma they bound every value estimate (live divergence check)
        # one list, shared with the live diagnosis' context and widened in place by the online loop ([] = none yet)
        self.reward_range: list[float] = stage.reward_range
        self._diag_ctx: dict = {}  # the live diagnosis' context (``_live_diagnosis``)
        self.step = 0
        self.best = -1.0
        self.avg = MetricAverager()  # training metrics since the last log point
        self._elapsed0 = 0.0  # wall time of the run before this process (a resumed run continues its clock)
        self._t_run = time.time()
        self._loop: dict | None = None  # online: the episode in progress and the loop's counters (checkpointed)
        self._eval_step = -1  # env/update step of the latest evaluation
        self.evaluator: Evaluator | None = None
        #: more callables ``hook(step, metrics)`` run after every log line (e.g. a Ray Tune trial reporting its
        #: evaluations, rlft.train.sweep)
        self.log_hooks: list = []

    def _warm_start(self, path: str) -> None:
        p = Path(path)
        if not p.is_file():
            raise CheckpointError(f"init_critic: training state not found: {p}")
        state = load_training_state(p, self.device, "init_critic")["algo"]
        loaded = self.algo.load_pretrained(state)
        if not loaded:
            raise CheckpointError(f"init_critic: no network in {p} matches {self.cfg.algo}'s networks by name/shape")
        self._print(escape(f"warm-started {', '.join(loaded)} from {p}"))

    # ---------------- persistence ----------------
    def _extra(self, tag: str) -> dict:
        return {
            "env_id": self.cfg.env.env_id,
            "algo": self.cfg.algo,
            "stage_step": self.step,
            "tag": tag,
            "obs_horizon": self.cfg.env.obs_horizon,
            "gamma": self.cfg.env.gamma,
        }

    def save_state(self) -> None:
        """Write ``state.pt`` -- never from non-finite weights: a diverged run keeps its last good checkpoint."""
        state = {
            "algo": self.algo.state_dict(),
            "step": self.step,
            "best": self.best,
            "torch_rng": torch.get_rng_state(),
            "gen": self.gen.get_state(),
            "np_rng": np.random.get_state(),
            "wall_s": self._elapsed0 + time.time() - self._t_run,
            "metric_avg": self.avg.state_dict(),
        }
        if self._loop is not None:
            lp = self._loop
            state["online_loop"] = {
                **{k: v for k, v in lp.items() if k not in ("chunks", "recent", "obs")},
                "chunks": torch.from_numpy(np.stack(lp["chunks"])) if lp["chunks"] else torch.zeros(0),
                "recent": torch.tensor(lp["recent"], dtype=torch.float64),
                "obs": torch.from_numpy(np.asarray(lp["obs"], np.float32)),
            }
        if self.ema is not None:
            state["policy_ema"] = self.ema.state_dict()
        bad = nonfinite_tensors({"algo": state["algo"], "policy_ema": state.get("policy_ema", {})})
        if bad:
            path = self.ckpt_dir / "state.pt"
            kept = f"{path} keeps the last good checkpoint" if path.exists() else "no checkpoint was written before"
            raise TrainingError(
                f"training diverged by step {self.step}: {len(bad)} weight/optimiser tensors are not "
                f"finite (first: {bad[0]}); the checkpoint was not written ({kept}). Lower the "
                f"learning rates or check the data"
            )
        if self.replay is not None:
            state["replay"] = {
                k: torch.from_numpy(np.ascontiguousarray(v)) for k, v in self.replay.state_dict().items()
            }
        # tensors and plain containers only, so that loading never needs pickle's arbitrary objects (weights_only)
        name, keys, pos, has_gauss, cached = state.pop("np_rng")
        state["np_rng"] = {
            "name": str(name),
            "keys": torch.from_numpy(np.asarray(keys, np.int64)),
            "pos": int(pos),
            "has_gauss": int(has_gauss),
            "cached_gaussian": float(cached),
        }
        with atomic_path(self.ckpt_dir / "state.pt") as tmp:
            torch.save(state, tmp)

    def load_state(self) -> None:
        path = self.ckpt_dir / "state.pt"
        if not path.is_file():
            raise CheckpointError(f"run.resume: no checkpoint to resume at {path}")
        state = load_training_state(path, self.device)
        self.algo.load_state_dict(state["algo"])
        self.step, self.best = int(state["step"]), float(state["best"])
        torch.set_rng_state(state["torch_rng"])
        self.gen.set_state(state["gen"])
        r = state["np_rng"]
        np.random.set_state(
            (r["name"], r["keys"].numpy().astype(np.uint32), r["pos"], r["has_gauss"], r["cached_gaussian"])
        )
        if self.replay is not None and "replay" in state:
            self.replay.load_state_dict({k: v.cpu().numpy() for k, v in state["replay"].items()})
        self._elapsed0 = float(state.get("wall_s", 0.0))
        if "metric_avg" in state:
            self.avg.load_state_dict(state["metric_avg"])
        if "online_loop" in state:
            lp = dict(state["online_loop"])
            lp["chunks"] = [c.numpy() for c in lp["chunks"]] if lp["chunks"].ndim > 1 else []
            lp["recent"] = [tuple(r) for r in lp["recent"].tolist()]
            lp["obs"] = lp["obs"].numpy()
            self._loop = lp
        if self.ema is not None:
            if "policy_ema" not in state:
                raise CheckpointError(
                    f"{path}: policy_ema={self.cfg.policy_ema} but the checkpoint holds no EMA policy "
                    f"(the run was started without it)"
                )
            self.ema.load_state_dict(state["policy_ema"])

    # ---------------- evaluation ----------------
    def evaluate(self) -> dict[str, float]:
        e = self.cfg.eval
        if self.evaluator is None and e.num_workers <= 1:
            self.evaluator = Evaluator(
                self.cfg.env.env_id,
                self.cfg.env.gamma,
                self.cfg.env.obs_horizon,
                self.cfg.env.max_episode_steps,
                n_parallel=min(e.parallel_envs, e.num_episodes),
                video=e.video_spec(),
            )
        t0 = time.time()
        summary, _ = evaluate_policy(
            self.policy,
            self.cfg.env.env_id,
            e.num_episodes,
            e.seed,
            self.cfg.env.gamma,
            self.cfg.env.obs_horizon,
            self.cfg.env.max_episode_steps,
            e.deterministic,
            e.num_workers,
            self.evaluator,
            video=e.video_spec(),
            video_dir=self.run_dir / "videos",
            video_prefix=f"step{self.step:07d}_",
        )
        summary["time/eval_s"] = time.time() - t0
        self._eval_step = self.step
        if summary["eval/success_once"] > self.best:
            self.best = summary["eval/success_once"]
            self.policy.save(self.ckpt_dir / "policy_best.safetensors", self._extra("best"))
        summary["eval/best_success_once"] = self.best
        return summary

    def _live_diagnosis(self):
        """Logger hook: a one-line warning (stderr) the first time each rlft.report.diagnose rule fires."""
        from rlft.report.diagnose import DIVERGENCE_RULES, LiveDiagnosis
        from rlft.train.logger import read_metrics

        ctx = self._diag_ctx
        ctx.update(
            {
                "algo": self.cfg.algo,
                "mode": self.cfg.mode,
                "algo_cfg": to_dict(self.cfg.algo_cfg),
                "act_horizon": self.adapter.act_horizon,
                "action_dim": self.adapter.action_dim,
                "gamma": self.cfg.env.gamma,
                "reward_range": self.reward_range,
                "init_policy": self.cfg.init_policy,
            }
        )
        warn = Console(stderr=True, soft_wrap=True)
        stop = self.cfg.run.stop_on_divergence

        def warn_line(f) -> None:
            if stop and f.rule in DIVERGENCE_RULES:
                raise TrainingError(
                    f"run.stop_on_divergence: {f.one_line()} -- stopped; "
                    f"{self.ckpt_dir / 'state.pt'} keeps the last checkpoint written before "
                    f"(rlft report {self.run_dir} explains)"
                )
            warn.print(
                f"[yellow]warning[/yellow] {escape(f'[{self.cfg.algo}]')} {escape(f.one_line())} -- rlft report "
                f"{self.run_dir} explains",
                highlight=False,
            )

        return LiveDiagnosis(ctx, warn_line, history=read_metrics(self.run_dir) if self.cfg.run.resume else None)

    def _print(self, msg: str) -> None:
        if not self.quiet:
            console.print(msg)

    # ---------------- loops ----------------
    def _check_resume_config(self) -> None:
        """Resuming continues the recorded run: only the fields in ``RESUME_MAY_CHANGE`` may differ from its
        config.yaml (a longer ``steps``, logging, checkpoints, threads, device); any other change is refused, so the
        recorded config never lies about how the weights were trained."""
        from rlft.config import read_yaml

        path = self.run_dir / "config.yaml"
        if not path.is_file():
            raise CheckpointError(f"run.resume: {path} is missing, so the run's settings are unknown")
        diffs = [
            f"{k}: {a!r} -> {b!r}"
            for k, a, b in _config_diff(read_yaml(path), to_dict(self.cfg))
            if not any(k == f or k.startswith(f + ".") for f in RESUME_MAY_CHANGE)
        ]
        if diffs:
            raise ConfigError(
                f"run.resume: these settings differ from {path}: {'; '.join(diffs[:6])}"
                f"{' ...' if len(diffs) > 6 else ''}. A resumed run continues with the settings it was "
                f"trained with; start a new run (or init_policy/init_critic from this one) to change them"
            )

    def run(self) -> dict:
        cfg = self.cfg
        resume_step = None
        if cfg.run.resume:
            self._check_resume_config()
            self.load_state()
            resume_step = self.step
        elif (self.run_dir / "metrics.jsonl").exists():
            raise ConfigError(
                f"run.name: run directory {self.run_dir} already holds a run; pick another name or pass --run.resume"
            )
        self.run_dir.mkdir(parents=True, exist_ok=True)
        save_yaml(cfg, self.run_dir / "config.yaml")
        self._t_run = time.time()
        self.logger = Logger(
            self.run_dir,
            cfg.run.tensorboard,
            cfg.run.track,
            cfg.run.wandb_project,
            self.run_dir.name,
            cfg.run.wandb_group,
            to_dict(cfg),
            resume_step=resume_step,
            elapsed_s=self._elapsed0,
        )
        self.logger.hooks += [self._live_diagnosis(), *self.log_hooks]
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
        summary = {
            "run_dir": str(self.run_dir),
            "algo": cfg.algo,
            "mode": cfg.mode,
            "steps": self.step,
            "wall_s": self._elapsed0 + time.time() - self._t_run,
            "final": last_eval,
            "best_success_once": self.best,
            "reward_range": self.reward_range or None,
        }
        atomic_write_text(self.run_dir / "summary.json", json.dumps(summary, indent=2))
        if self.evaluator is not None:
            self.evaluator.close()
        return summary

    def _progress(self, desc: str):
        from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

        return Progress(
            TextColumn(desc),
            BarColumn(),
            MofNCompleteColumn(),
            TimeRemainingColumn(),
            TextColumn("{task.fields[info]}"),
            console=console,
            disable=self.quiet,
            transient=False,
        )

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
            self._print(
                escape(f"[{cfg.algo}]") + f" step {self.step}: success_once {out['eval/success_once']:.2f} "
                f"success_at_end {out['eval/success_at_end']:.2f} return {out['eval/return']:.1f}"
            )
        if crossed(cfg.run.checkpoint_every):
            self.save_state()
        return out

    def _update(self, batch) -> dict[str, float]:
        """One algorithm update (metrics checked finite), then the policy EMA's."""
        metrics = self.algo.update(self.algo.featurize(batch))
        try:
            _check_finite(metrics, self.step)
        except TrainingError:
            self.logger.log(self.step, metrics)  # the diverged update's metrics, so `rlft report` can show them
            raise
        if self.ema is not None:
            self.ema.update()
        if "first_update" not in self._diag_ctx:  # the loss scale before any interval average hides it
            self._diag_ctx["first_update"] = dict(metrics)
        return metrics

    def _offline(self) -> dict | None:
        cfg, ac, avg = self.cfg, self.cfg.algo_cfg, self.avg
        last_eval = None
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

    def _new_episode(self, env) -> np.ndarray:
        """Reset for the next training episode (seeded by the step it starts at) and start its record."""
        seed = self.cfg.run.seed * 1_000_003 + self.step
        obs, _ = env.reset(seed=seed)
        self._loop.update(seed=seed, chunks=[], ret=0.0, success=False, length=0, obs=_state(obs))
        return obs

    def _continue_episode(self, env) -> np.ndarray:
        """Resume: rebuild the episode that was in progress at the checkpoint by resetting with its seed and
        replaying its chunks (the env is deterministic given both). Where the env does not reproduce it (the
        observation differs), say so and start a new episode: the run then differs from an uninterrupted one."""
        lp = self._loop
        obs, _ = env.reset(seed=int(lp["seed"]))
        for c in lp["chunks"]:
            obs, *_ = env.step(c)
        if not np.array_equal(_state(obs), lp["obs"]):
            Console(stderr=True, soft_wrap=True).print(
                f"[yellow]warning[/yellow] run.resume: {escape(self.cfg.env.env_id)} did not reproduce the episode in "
                f"progress at step {self.step} (same seed and actions, another observation); a new episode starts, "
                "so this run will differ from an uninterrupted one",
                highlight=False,
            )
            self.replay.end_episodes()
            return self._new_episode(env)
        return obs

    def _online(self) -> dict | None:
        """The online loop: step the env(s) with the exploring policy, then update on what the algorithm asks for
        (``online_batches``) once per collected macro-step; evaluate and checkpoint on schedule. ``num_envs`` > 1
        steps that many envs in parallel processes (``_vector_step``)."""
        cfg, ac, n = self.cfg, self.cfg.algo_cfg, self.cfg.num_envs
        sampler = MixedSampler(self.dataset if ac.offline_ratio > 0 else None, self.replay, ac.offline_ratio)
        if n > 1:
            env, step_fn = self._vector_envs(), self._vector_step
            obs = self._start_vector(env)
        else:
            env = self.adapter.wrap_env(
                make_env(cfg.env.env_id, obs_horizon=cfg.env.obs_horizon, **self.env_kw), cfg.env.gamma
            )
            step_fn = self._env_step
            if self._loop is None:  # a fresh run; a resumed one continues the checkpointed episode and counters
                self._loop = {"episode": 0, "updates": 0, "recent": []}
                obs = self._new_episode(env)
            else:
                obs = self._continue_episode(env)
        try:
            return self._online_loop(env, obs, step_fn, sampler)
        finally:
            env.close()  # also when the loop fails: the vector env's worker processes must not outlive the run

    def _online_loop(self, env, obs, step_fn, sampler) -> dict | None:
        cfg, ac, n = self.cfg, self.cfg.algo_cfg, self.cfg.num_envs
        last_eval, t_start, step0 = None, time.time(), self.step
        with self._progress(f"{cfg.algo} online") as prog:
            task = prog.add_task("env steps", total=cfg.steps, completed=self.step, info="")
            while self.step < cfg.steps:
                prev = self.step
                obs = step_fn(env, obs)
                for _ in range(n):  # UTD counts per collected macro-step, whatever the number of envs
                    # the algorithm decides what it updates on now: replay batches (UTD), a whole rollout, or nothing
                    for batch in self.algo.online_batches(
                        self.replay, lambda: sampler.sample(ac.batch_size, self.gen), self.step
                    ):
                        self.avg.add(self._update(batch.to(self.device)))
                        self._loop["updates"] += 1
                extra = self._online_metrics(step0, t_start)
                last_eval = self._maybe_eval_and_ckpt(prev, self.avg, extra) or last_eval
                succ = extra.get("train/episode_success", 0)
                prog.update(
                    task, completed=min(self.step, cfg.steps), info=f"ep {self._loop['episode']} succ(20) {succ:.2f}"
                )
        return last_eval

    def _widen_reward_range(self, rewards) -> np.ndarray:
        """Widen the run's reward range (shared with the live checks) by a macro-step's raw env rewards."""
        rs = np.asarray(rewards, np.float64)
        if len(rs):
            rr, lo, hi = self.reward_range, float(rs.min()), float(rs.max())
            rr[:] = [lo, hi] if not rr else [min(rr[0], lo), max(rr[1], hi)]
        return rs

    def _env_step(self, env, obs) -> np.ndarray:
        """One macro-step of the exploring policy: into the replay, the reward range and the episode's record; returns
        the next observation (a new episode's first after an episode end)."""
        lp = self._loop
        chunk = self.adapter.exploring(self.algo.explore(obs).cpu()[None], self.step)[0]
        next_obs, R, term, trunc, info = env.step(chunk.numpy())
        decoded = self.adapter.exec_chunk(info)  # the executed env chunk when the action is latent noise
        self.replay.add(
            _state(obs)[None],
            chunk[None].numpy(),
            np.array([R]),
            _state(next_obs)[None],
            np.array([float(term)]),
            np.array([info["discount"]]),
            np.array([info["k"]]),
            exec_chunk=None if decoded is None else np.asarray(decoded)[None],
            images=_frames(obs),
            next_images=_frames(next_obs),
            done=np.array([term or trunc]),
        )
        self.step += int(info["k"])
        rs = self._widen_reward_range(info["env_rewards"])
        lp["ret"] += float(np.sum(rs))
        lp["success"] = lp["success"] or bool(info["success"])
        lp["length"] += int(info["k"])
        if term or trunc:
            lp["recent"] = (lp["recent"] + [(float(lp["success"]), lp["ret"])])[-20:]
            lp["episode"] += 1
            return self._new_episode(env)
        lp["chunks"].append(chunk.numpy())
        lp["obs"] = _state(next_obs)
        return next_obs

    # ---- num_envs > 1: envs in parallel processes ----
    def _vector_envs(self):
        """``num_envs`` copies of the env the actor acts on (the adapter's wrappers included), each in its own
        process (gymnasium ``AsyncVectorEnv``, no autoreset: episodes are reset here, with their own seeds)."""
        import copy
        import functools

        import gymnasium

        from rlft.envs import env_family

        cfg = self.cfg
        if self.replay.image_shapes:
            raise ConfigError(
                f"num_envs: {cfg.num_envs} parallel envs take state observations only; this env has cameras"
            )
        fam = env_family(cfg.env.env_id)
        if fam.prepare is not None:  # e.g. ManiSkill's Vulkan layer, built once so the workers inherit it
            fam.prepare()
        adapter = copy.deepcopy(self.adapter)  # its modules go to the workers from the CPU, whatever run.device
        for k, v in vars(adapter).items():
            if isinstance(v, torch.nn.Module):
                setattr(adapter, k, v.cpu())
        fn = functools.partial(_online_env, cfg.env.env_id, cfg.env.obs_horizon, self.env_kw, adapter, cfg.env.gamma)
        return gymnasium.vector.AsyncVectorEnv(
            [fn] * cfg.num_envs, context="spawn", autoreset_mode=gymnasium.vector.AutoresetMode.DISABLED
        )

    def _start_vector(self, envs) -> np.ndarray:
        """Start every env's first episode. A resumed run keeps its counters but starts new episodes (the episodes
        in progress at the checkpoint are not replayed with several envs)."""
        n = self.cfg.num_envs
        if self._loop is None:
            self._loop = {"episode": 0, "updates": 0, "recent": []}
        # the single-env episode fields stay empty (the checkpoint layout is shared with num_envs 1)
        self._loop.update(seed=0, chunks=[], ret=0.0, success=False, length=0, obs=np.zeros(0, np.float32))
        self._vec = {"ret": np.zeros(n), "success": np.zeros(n, bool)}
        self.replay.end_episodes()  # every env starts a new episode: nothing links to the entries before
        return self._reset_envs(envs, np.ones(n, bool), None)

    def _reset_envs(self, envs, mask: np.ndarray, obs: np.ndarray | None) -> np.ndarray:
        """Reset the envs where ``mask`` is set, each seeded from (run seed, step, its index); the others keep
        ``obs``."""
        seq = lambda i: int(np.random.SeedSequence([self.cfg.run.seed, self.step, i]).generate_state(1)[0])  # noqa: E731
        seeds = [seq(i) if m else None for i, m in enumerate(mask)]
        new, _ = envs.reset(seed=seeds, options={"reset_mask": mask})
        self._vec["ret"][mask], self._vec["success"][mask] = 0.0, False
        new = np.asarray(new, np.float32)
        return new if obs is None else np.where(mask[:, None], new, obs)

    def _vector_step(self, envs, obs: np.ndarray) -> np.ndarray:
        """One macro-step of every env: ``num_envs`` transitions into the replay, episode records, resets."""
        lp, v = self._loop, self._vec
        chunk = self.adapter.exploring(self.algo.explore(obs).cpu(), self.step).numpy()
        next_obs, R, term, trunc, info = envs.step(chunk)
        decoded = self.adapter.exec_chunk(info)
        next_obs = np.asarray(next_obs, np.float32)
        done = np.asarray(term, bool) | np.asarray(trunc, bool)
        self.replay.add(
            obs,
            chunk,
            np.asarray(R, np.float64),
            next_obs,
            np.asarray(term, np.float64),
            np.asarray(info["discount"], np.float64),
            np.asarray(info["k"]),
            exec_chunk=None if decoded is None else np.stack(list(decoded)),
            done=done,
        )
        self.step += int(np.sum(info["k"]))
        for i in range(len(obs)):
            v["ret"][i] += float(np.sum(self._widen_reward_range(info["env_rewards"][i])))
            v["success"][i] |= bool(info["success"][i])
        for i in np.flatnonzero(done):
            lp["recent"] = (lp["recent"] + [(float(v["success"][i]), float(v["ret"][i]))])[-20:]
            lp["episode"] += 1
        return self._reset_envs(envs, done, next_obs) if done.any() else next_obs

    def _online_metrics(self, step0: int, t_start: float) -> dict[str, float]:
        """The online loop's own metrics: episodes, updates, env steps/s, the last 20 episodes' success and return."""
        lp = self._loop
        extra = {
            "train/episodes": float(lp["episode"]),
            "time/updates": float(lp["updates"]),
            "time/env_steps_per_s": (self.step - step0) / max(time.time() - t_start, 1e-9),
        }
        if lp["recent"]:
            extra["train/episode_success"] = float(np.mean([r[0] for r in lp["recent"]]))
            extra["train/episode_return"] = float(np.mean([r[1] for r in lp["recent"]]))
        return extra


def _online_env(env_id: str, obs_horizon: int, env_kw: dict, adapter, gamma: float):
    """The env an online actor acts on, built inside a vector-env worker process: one torch thread, and an adapter's
    frozen base policy (DSRL, residual RL) on the CPU there (``_vector_envs`` sends it from the CPU)."""
    set_threads(1)
    return adapter.wrap_env(make_env(env_id, obs_horizon=obs_horizon, **env_kw), gamma)


def run_train(cfg: TrainConfig, run_dir: str | Path | None = None, quiet: bool = False) -> dict:
    return Trainer(cfg, run_dir, quiet).run()


def _state(obs) -> np.ndarray:
    """The flat float32 state of an observation (an ``Obs`` with cameras: its state part)."""
    return np.asarray(obs.state if isinstance(obs, Obs) else obs, np.float32)


def _frames(obs) -> dict | None:
    """An ``Obs``'s frames as a batch of one ({camera: [1, To, H, W, C]}); None for a state observation."""
    return {c: np.asarray(v)[None] for c, v in obs.images.items()} if isinstance(obs, Obs) else None
