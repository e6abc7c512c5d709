"""Small shared helpers: seeding, thread control, atomic file writes, worker processes that die with their parent."""

from __future__ import annotations

import contextlib
import hashlib
import os
import random
import re
import shutil
import socket
import sys
import tempfile
import threading
import time
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


# Temporaries are named ``.<name>.tmp-<host>-<pid>-<random>``: the writing host (a short hash of its name) and process
# id let a later writer recognise, and remove, the leftovers of a writer that was killed.
_HOST = hashlib.sha1(socket.gethostname().encode()).hexdigest()[:8]
_TMP_RE = re.compile(r"^\.(?P<name>.+)\.tmp-(?P<host>[0-9a-f]{8})-(?P<pid>\d+)-[^/]*$")


def _pid_alive(pid: int) -> bool:
    """Whether process ``pid`` exists on this host and is not a zombie (a killed, not yet reaped process)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # another user's process
        return True
    except OSError:
        return True  # e.g. an out-of-range pid on some systems: do not guess, keep the file
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
        return stat[stat.rindex(")") + 2] != "Z"
    except (OSError, ValueError, IndexError):
        return True


def remove_stale_temps(folder: str | os.PathLike, name: str | None = None) -> list[Path]:
    """Remove the ``atomic_path`` temporaries in ``folder`` (only those for ``name`` when given) whose writer is dead.

    A temporary belongs to a process on this host (by host hash and pid); files of a live process, of another host
    (a shared file system) or not named by ``atomic_path`` are kept. Returns the removed paths.
    """
    folder = Path(folder)
    removed: list[Path] = []
    try:
        entries = list(os.scandir(folder))
    except OSError:
        return removed
    for entry in entries:
        m = _TMP_RE.match(entry.name)
        if m is None or m["host"] != _HOST or (name is not None and m["name"] != name):
            continue
        if _pid_alive(int(m["pid"])):
            continue
        p = Path(entry.path)
        with contextlib.suppress(OSError):
            if p.is_dir() and not p.is_symlink():
                shutil.rmtree(p)
            else:
                p.unlink()
            removed.append(p)
    return removed


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary path next to ``path``; on success rename it over ``path`` atomically.

    If the body raises the destination is untouched and the temporary file is removed. If the process is killed, a
    hidden ``.<name>.tmp-<host>-<pid>-*`` file may remain (never a half-written ``path``); the next ``atomic_path``
    for the same ``path`` removes it once that process is gone (``remove_stale_temps``).
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    remove_stale_temps(path.parent, path.name)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.tmp-{_HOST}-{os.getpid()}-", dir=path.parent)
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


def exit_with_parent(poll_s: float = 0.2) -> None:
    """Make this (worker) process exit within ``poll_s`` seconds once its parent process is gone.

    Meant as a ``multiprocessing.Pool`` initializer: a pool worker busy with a task does not notice that the process
    that started it was killed, and would finish its task (seconds to minutes) before exiting. A daemon thread watches
    the parent pid and ends the process with ``os._exit`` when the worker is re-parented.
    """
    parent = os.getppid()

    def watch() -> None:
        while os.getppid() == parent:
            time.sleep(poll_s)
        os._exit(1)

    threading.Thread(target=watch, name="rlft-exit-with-parent", daemon=True).start()


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
