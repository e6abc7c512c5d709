"""Runners: offline loop, online loop, evaluation, checkpointing, logging and the stage pipeline.

Nothing here knows which algorithm it runs: it reads ``AlgoConfig`` fields and calls ``update``/``explore``.
"""
