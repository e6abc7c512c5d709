"""Test-suite setup: one torch thread (2 OpenMP threads next to another busy process can be ~100x slower on a
shared 2-core machine) and headless MuJoCo."""

import os

os.environ.setdefault("MUJOCO_GL", "egl")

import torch  # noqa: E402

torch.set_num_threads(1)


def pytest_addoption(parser):
    parser.addoption(
        "--plugin",
        action="append",
        default=[],
        metavar="FILE.py",
        help="an algorithm file from outside rlft to register before collection, so the contract test "
        "(tests/test_algos_contract.py) covers it (docs/add-an-algorithm.md)",
    )


def pytest_configure(config):
    plugins = config.getoption("--plugin")
    if plugins:
        from rlft.algos import import_plugins

        import_plugins(plugins)
