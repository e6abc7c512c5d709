"""Calibrated Q-Learning, Cal-QL (Nakamoto et al., 2023), over action chunks: CQL with a calibrated penalty.

Cal-QL is CQL(H) (``rlft.algos.cql``; every loss and field is the same) with one change inside the conservative
gap: the critic values of the *policy's* chunks (the pi(.|s) and pi(.|s') samples, not the uniform ones) are
lower-bounded by a reference value of the behaviour policy before the importance correction,

    Q_i(s, a_m)  ->  max(Q_i(s, a_m), V_ref(s)),     V_ref(s) = Monte-Carlo return-to-go of the data from s,

so the penalty stops pushing the learnt Q below the data's own return: the critic stays conservative but
*calibrated* (never below the behaviour policy's value), which is what makes the subsequent online fine-tuning
start without the "unlearning" dip of plain CQL.

The reference value is ``ChunkBatch.mc_return``: ``ChunkDataset`` computes the discounted return-to-go of the
episode's actual rewards from each chunk's start (``rlft.data.dataset.discounted_return_to_go``; episodes cut by a
time limit get the last reward repeated as their tail, which for a failed sparse-reward episode is exactly the
reference code's ``r_neg / (1 - gamma)``). It is in the critic's units: Q(s, chunk) is also a per-env-step
discounted return.

Online data fallback: replay-buffer rows carry no return-to-go (the buffer stores macro transitions, not whole
episodes), so their ``mc_return`` is ``-inf`` and the bound is inactive for them -- on those rows Cal-QL is plain CQL.
``critic/calql_bound_rate`` (the fraction of policy-action values the bound raised) shows how active it is.
"""

from __future__ import annotations

import dataclasses
from typing import ClassVar

import torch

from rlft.algos import register
from rlft.algos.base import AlgoConfig
from rlft.algos.cql import CQL, CQLConfig
from rlft.data.batch import ChunkBatch


@dataclasses.dataclass
class CalQLConfig(CQLConfig):
    """Cal-QL: every field is CQL's (``CQLConfig``); the bound needs no hyper-parameter."""


@register
class CalQL(CQL):
    """CQL whose policy-action values in the conservative logsumexp are bounded below by the data's MC return."""

    Config: ClassVar[type[AlgoConfig]] = CalQLConfig
    name: ClassVar[str] = "calql"
    supported_policies: ClassVar[tuple[str, ...]] = ("gaussian",)

    def policy_q_lower_bound(self, batch: ChunkBatch) -> torch.Tensor | None:
        """The data's Monte-Carlo return-to-go [B] (``-inf`` where unknown, i.e. no bound on that row)."""
        return batch.mc_return
