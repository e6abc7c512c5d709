"""Updates per second of BC, IQL and SAC on camera batches (64x64 RGB, one camera, history 1), and the memory of image
transitions in the replay buffer.

    python scripts/bench_visual.py [--batch 256] [--updates 10] [--repeats 3] [--encoder conv] [--device cpu]

Each row: the algorithm's default config with the given encoder (``policy.encoder``), a flow policy for BC and IQL
(the pixel pipeline's) and a Gaussian one for SAC; ``--repeats`` timings of ``--updates`` updates (``featurize`` +
``update``: the encoder's forward on obs and next_obs, its backward where the algorithm trains it) after 2 untimed
ones; the median updates/s. Batches are built beforehand (uint8 frames, as the dataset hands them out).
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from rlft.algos import ALGORITHMS  # noqa: E402
from rlft.data.batch import ChunkBatch  # noqa: E402
from rlft.data.normalize import Normalizer  # noqa: E402
from rlft.data.replay import ReplayBuffer  # noqa: E402
from rlft.nets.encoders import EncoderSpec  # noqa: E402
from rlft.policies import build_policy  # noqa: E402
from rlft.policies.config import EncoderOptions, PolicyConfig  # noqa: E402

STATE, ACT, H, CAM = 19, 5, 5, (1, 64, 64, 3)


def batch(n: int, device, g) -> ChunkBatch:
    b = ChunkBatch.random(n, STATE, H, ACT, generator=g)
    b.images = {"front": torch.randint(0, 256, (n, *CAM), dtype=torch.uint8, generator=g)}
    b.next_images = {"front": torch.randint(0, 256, (n, *CAM), dtype=torch.uint8, generator=g)}
    return b.to(device)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--batch", type=int, default=256)
    ap.add_argument("--updates", type=int, default=10)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--encoder", default="conv", choices=["conv", "resnet18"])
    ap.add_argument("--device", default="cpu")
    args = ap.parse_args()
    torch.set_num_threads(1)
    dev = torch.device(args.device)
    g = torch.Generator().manual_seed(0)
    print(f"| algorithm ({args.encoder} encoder, batch {args.batch}, {dev}) | updates/s | ms/update |")
    print("|---|---|---|")
    for name, kind in (("bc", "flow"), ("iql", "flow"), ("sac", "gaussian")):
        cls = ALGORITHMS[name]
        pcfg = PolicyConfig(kind=kind, encoder=EncoderOptions(kind=args.encoder))
        spec = EncoderSpec({"front": CAM}, STATE, args.encoder, pcfg.encoder.feature_dim, pcfg.encoder.shift_pad)
        torch.manual_seed(0)
        policy = build_policy(pcfg, STATE + spec.out_dim, ACT, H).attach_encoder(spec)
        algo = cls(
            cls.Config(policy=pcfg, batch_size=args.batch), STATE + spec.out_dim, ACT, H, policy=policy, device=dev
        )
        batches = [batch(args.batch, dev, g) for _ in range(args.updates + 2)]
        for b in batches[:2]:
            algo.update(algo.featurize(b))
        times = []
        for _ in range(args.repeats):
            t0 = time.perf_counter()
            for b in batches[2:]:
                algo.update(algo.featurize(b))
            if dev.type == "cuda":
                torch.cuda.synchronize()
            times.append((time.perf_counter() - t0) / args.updates)
        t = statistics.median(times)
        print(f"| {name} ({kind}) | {1 / t:.2f} | {t * 1e3:.0f} |")
    rb = ReplayBuffer(100_000, STATE, H, ACT, Normalizer(STATE, ACT), image_shapes={"front": CAM})
    frames = sum(v.numel() * v.element_size() for d in (rb.images, rb.next_images) for v in d.values())
    rest = sum(t.numel() * t.element_size() for t in (rb.obs, rb.chunk, rb.reward, rb.next_obs, rb.terminated))
    print(
        f"replay of 100k entries: frames {frames / 2**30:.2f} GiB (uint8, obs + next_obs), the rest {rest / 2**20:.0f} MiB"
    )


if __name__ == "__main__":
    main()
