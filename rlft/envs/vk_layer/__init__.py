"""Make SAPIEN (ManiSkill3's simulator) start on a machine without a GPU: ``ensure_vulkan_for_sapien()``.

Why: SAPIEN 3 needs a Vulkan device even with ``render_backend="none"`` (it builds render materials while loading a
scene) and refuses one without the ``descriptorBindingPartiallyBound`` feature. On a CPU-only Debian 12 machine the
only Vulkan device is Mesa's lavapipe (``libvulkan1 mesa-vulkan-drivers``), which lacks that feature, so
``gym.make("LiftPegUpright-v1", ...)`` fails with "failed to find a rendering device". We found no environment
variable or ICD setting that changes what lavapipe reports, and Debian 12 packages no newer Mesa (22.3.6), so rlft
ships a tiny Vulkan layer (``partially_bound_layer.c``, ~200 lines) that reports the feature and strips it from the
device-creation request when the driver lacks it. State simulation is then exact (physics does not use Vulkan);
camera images are not supported through it.

What this module does, once per process and before SAPIEN creates its Vulkan instance (first env creation):

* nothing when an NVIDIA GPU is visible (``nvidia-smi`` works) or ``RLFT_VK_LAYER=0``;
* otherwise builds the layer with ``gcc -shared -fPIC`` (cached under ``$RLFT_CACHE_DIR`` or
  ``~/.cache/rlft/vk_layer/<source hash>/``, rebuilt when the C source changes; needs ``gcc`` and the Vulkan headers
  of ``libvulkan-dev``), writes its loader manifest (``VkLayer_rlft_partially_bound.json``) next to it and sets
  ``VK_ADD_LAYER_PATH`` and ``VK_INSTANCE_LAYERS`` in ``os.environ`` (inherited by worker processes).

The layer is inert on a device that supports the feature, so enabling it needlessly is harmless.
``python -m rlft.envs.vk_layer`` builds it and prints the directory (``.ci/run`` uses it).
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import tempfile
from pathlib import Path

from rlft.errors import EnvError

LAYER_NAME = "VK_LAYER_RLFT_partially_bound"
LIB_NAME = "libVkLayer_rlft_partially_bound.so"
MANIFEST_NAME = "VkLayer_rlft_partially_bound.json"
SOURCE = Path(__file__).with_name("partially_bound_layer.c")
APT_HINT = "apt-get install libvulkan1 mesa-vulkan-drivers libvulkan-dev gcc"

_state: dict[str, str] = {}


def nvidia_gpu_present() -> bool:
    """True when ``nvidia-smi`` runs (SAPIEN's own test for a GPU Vulkan driver)."""
    exe = shutil.which("nvidia-smi")
    if exe is None:
        return False
    try:
        return subprocess.run([exe], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, timeout=20).returncode == 0
    except (OSError, subprocess.TimeoutExpired):
        return False


def _cache_root() -> Path:
    base = os.environ.get("RLFT_CACHE_DIR") or os.path.join(os.path.expanduser("~"), ".cache", "rlft")
    return Path(base) / "vk_layer"


def build_layer(out_dir: str | os.PathLike | None = None) -> Path:
    """Compile the layer and write its manifest; return the directory holding both (reused when up to date)."""
    src = SOURCE.read_bytes()
    digest = hashlib.sha256(src).hexdigest()[:16]
    out = Path(out_dir) if out_dir is not None else _cache_root() / digest
    lib, manifest = out / LIB_NAME, out / MANIFEST_NAME
    if lib.is_file() and manifest.is_file():
        return out
    gcc = shutil.which("gcc") or shutil.which("cc")
    if gcc is None:
        raise EnvError(f"building the Vulkan layer for ManiSkill on a CPU machine needs a C compiler; {APT_HINT}")
    if not Path("/usr/include/vulkan/vk_layer.h").is_file() and not os.environ.get("CPATH"):
        raise EnvError(
            f"building the Vulkan layer for ManiSkill needs the Vulkan headers (vulkan/vk_layer.h); {APT_HINT}"
        )
    out.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=".build-", suffix=".so", dir=out)
    os.close(fd)
    try:
        cmd = [gcc, "-shared", "-fPIC", "-O2", "-fvisibility=hidden", "-o", tmp, str(SOURCE), "-lpthread"]
        res = subprocess.run(cmd, capture_output=True, text=True)
        if res.returncode != 0:
            raise EnvError(f"building the Vulkan layer failed ({' '.join(cmd)}):\n{res.stderr.strip()}\n{APT_HINT}")
        os.replace(tmp, lib)  # atomic: concurrent builders each install a complete file
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
    meta = {
        "file_format_version": "1.1.2",
        "layer": {
            "name": LAYER_NAME,
            "type": "GLOBAL",
            "library_path": str(lib.resolve()),
            "api_version": "1.3.239",
            "implementation_version": "1",
            "description": "rlft: report descriptorBindingPartiallyBound and strip it from vkCreateDevice when the "
            "driver lacks it (SAPIEN state-only simulation on lavapipe)",
        },
    }
    fd, tmpj = tempfile.mkstemp(prefix=".manifest-", suffix=".json", dir=out)
    with os.fdopen(fd, "w") as f:
        json.dump(meta, f, indent=1)
    os.replace(tmpj, manifest)
    return out


def _lavapipe_icd_present() -> bool:
    for d in ("/usr/share/vulkan/icd.d", "/etc/vulkan/icd.d", "/usr/local/share/vulkan/icd.d"):
        if os.path.isdir(d) and any(f.startswith("lvp_icd") for f in os.listdir(d)):
            return True
    return False


def ensure_vulkan_for_sapien() -> str:
    """Prepare the Vulkan environment for SAPIEN in this process; return what was done:

    ``"gpu"`` (NVIDIA GPU visible: nothing to do), ``"disabled"`` (``RLFT_VK_LAYER=0``), ``"already"`` (the layer is
    already enabled, e.g. inherited from the parent process) or ``"layer"`` (built/enabled now).
    Raises ``EnvError`` with the apt-get command when the CPU Vulkan driver or the build tools are missing.
    """
    if "mode" in _state:
        return _state["mode"]
    if os.environ.get("RLFT_VK_LAYER", "1") == "0":
        mode = "disabled"
    elif nvidia_gpu_present():
        mode = "gpu"
    elif LAYER_NAME in os.environ.get("VK_INSTANCE_LAYERS", "").split(":"):
        mode = "already"
    else:
        if not _lavapipe_icd_present():
            raise EnvError(
                "ManiSkill on a CPU machine needs Mesa's CPU Vulkan driver (lavapipe) and the Vulkan "
                f"loader; {APT_HINT}"
            )
        out = build_layer()
        paths = [p for p in os.environ.get("VK_ADD_LAYER_PATH", "").split(":") if p]
        os.environ["VK_ADD_LAYER_PATH"] = ":".join([str(out)] + [p for p in paths if p != str(out)])
        layers = [x for x in os.environ.get("VK_INSTANCE_LAYERS", "").split(":") if x]
        os.environ["VK_INSTANCE_LAYERS"] = ":".join(layers + [LAYER_NAME])
        mode = "layer"
    _state["mode"] = mode
    return mode


__all__ = ["LAYER_NAME", "build_layer", "ensure_vulkan_for_sapien", "nvidia_gpu_present"]
