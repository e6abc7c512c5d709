"""rlft: reinforcement-learning fine-tuning of robot manipulation policies.

Pipeline: expert data -> BC -> offline RL -> online RL -> evaluation. See README.md and docs/guide.md.
"""

__version__ = "0.1.0"
