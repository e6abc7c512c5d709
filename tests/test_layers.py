"""rlft's modules stack in layers (README "How the code is layered"): a module imports only from its own layer or the
layers below it -- function-level imports included -- so there is no import circle between packages."""

import ast
from pathlib import Path

RLFT = Path(__file__).resolve().parent.parent / "rlft"

LAYERS = [
    {"rlft", "rlft.errors", "rlft.utils", "rlft.config"},
    {"rlft.data"},
    {"rlft.envs"},
    {"rlft.nets"},
    {"rlft.policies"},
    {"rlft.video"},
    {"rlft.rollout"},
    {"rlft.collect"},
    {"rlft.deploy"},
    {"rlft.algos"},
    {"rlft.report"},
    {"rlft.train"},
    {"rlft.cli", "rlft.__main__"},
]


def _unit(module: str) -> str:
    """The layer unit of a module: ``rlft.X`` for anything inside ``rlft/X``."""
    parts = module.split(".")
    return ".".join(parts[:2])


def _layer(module: str) -> int:
    unit = _unit(module)
    for i, layer in enumerate(LAYERS):
        if unit in layer:
            return i
    raise AssertionError(f"{module}: no layer in tests/test_layers.py LAYERS; add it where it belongs")


def _imports():
    for path in sorted(RLFT.rglob("*.py")):
        rel = path.relative_to(RLFT.parent).with_suffix("")
        module = ".".join(rel.parts[:-1] if rel.name == "__init__" else rel.parts)
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
                names = [node.module]
            elif isinstance(node, ast.Import):
                names = [a.name for a in node.names]
            else:
                continue
            for name in names:
                if name == "rlft" or name.startswith("rlft."):
                    yield module, name, node.lineno, path


def test_every_module_has_a_layer():
    for module, target, _, _ in _imports():
        _layer(module), _layer(target)


def test_no_module_imports_from_a_layer_above_it():
    upward = [
        f"{path.relative_to(RLFT.parent)}:{line}: {module} imports {target}"
        for module, target, line, path in _imports()
        if _layer(target) > _layer(module)
    ]
    assert not upward, "imports from a higher layer:\n" + "\n".join(upward)


def test_the_readme_sketch_is_this_table():
    """README "How the code is layered" lists the layers top down, one per line (video shares rollout's line)."""
    import re

    readme = (RLFT.parent / "README.md").read_text()
    block = re.search(r"## How the code is layered.*?```\n(.*?)```", readme, flags=re.S).group(1)
    firsts = [line.split()[0] for line in block.strip().splitlines()[:-1]]  # the last line is the bottom layer
    units = [
        u.removeprefix("rlft.")
        for layer in LAYERS[1:]
        for u in sorted(layer)
        if u not in ("rlft.video", "rlft.__main__")
    ]
    assert firsts[::-1] == units
    assert "video" in block
