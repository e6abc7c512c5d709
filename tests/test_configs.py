"""Every YAML file shipped in configs/ loads strictly into its typed config (a typo in a shipped config fails here,
not minutes into a user's run)."""

from pathlib import Path

import pytest

from rlft.collect import CollectConfig
from rlft.config import load_yaml, read_yaml
from rlft.train.config import train_config_from_dict
from rlft.train.pipeline import load_pipeline_config
from rlft.train.sweep import expand, load_sweep_config

CONFIGS = sorted((Path(__file__).resolve().parent.parent / "configs").glob("*.yaml"))


def test_configs_folder_is_not_empty():
    assert len(CONFIGS) >= 20


@pytest.mark.parametrize("path", CONFIGS, ids=lambda p: p.name)
def test_shipped_config_loads(path):
    data = read_yaml(path)
    if path.name.startswith("collect"):
        cfg = load_yaml(CollectConfig, path)
        assert cfg.num_episodes > 0
    elif "stages" in data:
        cfg = load_pipeline_config(path)
        assert cfg.stages and all(Path(st.config).is_file() for st in cfg.stages)
    elif "grid" in data:
        runs = expand(load_sweep_config(path))
        assert runs and len({name for name, *_ in runs}) == len(runs)  # every run has its own directory
    else:
        cfg = train_config_from_dict(data, str(path))
        assert cfg.steps > 0 and cfg.algo == data["algo"]
