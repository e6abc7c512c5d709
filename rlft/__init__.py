"""rlft: reinforcement-learning fine-tuning of robot manipulation policies.

Pipeline: expert data -> BC -> offline RL -> online RL -> evaluation. See README.md and DESIGN notes in the modules.
"""

__version__ = "0.1.0"
