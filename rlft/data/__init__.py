"""Data layer: batch types, dataset readers/writers, chunk sampling, replay buffer and offline/online mixing."""

from rlft.data.batch import ChunkBatch

__all__ = ["ChunkBatch"]
