"""Small shared helpers: seeding, thread control, atomic file writes."""

from __future__ import annotations

import contextlib
import os
import random
import shutil
import sys
import tempfile
from pathlib import Path
from typing import Iterator

import numpy as np
import torch
from rich.console import Console


def seed_everything(seed: int) -> torch.Generator:
    """Seed python, numpy and torch; return a torch.Generator seeded with ``seed`` for explicit use."""
    random.seed(seed)
    np.random.seed(seed % (2**32))
    torch.manual_seed(seed)
    g = torch.Generator()
    g.manual_seed(seed)
    return g


def set_threads(n: int) -> None:
    """Set torch's intra-op thread count deliberately.

    On a shared 2-core machine, 2 OpenMP threads next to another busy process can make a 2 ms update take 300 ms
    (spinning); 1 thread is the safe default for small MLP updates. ``n <= 0`` leaves torch's default.
    """
    if n > 0:
        torch.set_num_threads(n)
        with contextlib.suppress(RuntimeError):
            torch.set_num_interop_threads(1)


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary path next to ``path``; on success rename it over ``path`` atomically.

    If the body raises (or the process is killed) the destination is untouched and the temporary file is removed
    (on a kill, a ``.tmp-*`` file may remain but never a half-written ``path``).
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.tmp-", dir=path.parent)
    os.close(fd)
    umask = os.umask(0)
    os.umask(umask)
    os.chmod(tmp, 0o666 & ~umask)  # mkstemp creates 0600; give the final file ordinary permissions
    tmp_path = Path(tmp)
    try:
        yield tmp_path
        os.replace(tmp_path, path)
    except BaseException:
        if tmp_path.is_dir():
            shutil.rmtree(tmp_path, ignore_errors=True)
        else:
            tmp_path.unlink(missing_ok=True)
        raise


def atomic_write_text(path: str | os.PathLike, text: str) -> None:
    """Write ``text`` to ``path`` atomically."""
    with atomic_path(path) as tmp:
        tmp.write_text(text)


def resolve_device(device: str) -> torch.device:
    """'auto' -> cuda if available else cpu; otherwise torch.device(device)."""
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(device)


def make_console(**kwargs) -> Console:
    """A rich console for rlft's tables and progress.

    On a terminal rich sizes output to the window; written to a file or pipe it would fall back to 80 columns and
    wrap every table cell over several lines. There the width is 140 unless ``COLUMNS`` says otherwise.
    """
    stream = sys.stderr if kwargs.get("stderr") else sys.stdout
    if "width" not in kwargs and "COLUMNS" not in os.environ and not stream.isatty():
        kwargs["width"] = 140
    return Console(**kwargs)
