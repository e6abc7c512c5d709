#!/usr/bin/env bash
# Set up rlft on a Debian/Ubuntu machine: system libraries, a virtual environment in .venv, the package.
#
#   bash scripts/setup.sh                   # what `rlft pipeline` needs
#   bash scripts/setup.sh test,maniskill    # ... plus the named extras of pyproject.toml (the test suite needs both)
#
# System packages (installed only when missing):
#   * always: EGL + Mesa's software rasteriser, for MuJoCo's offscreen rendering (evaluation videos);
#   * with the maniskill extra: the Vulkan loader, Mesa's CPU Vulkan driver (lavapipe), the Vulkan headers and a C
#     compiler -- SAPIEN needs a Vulkan device even for state observations, and rlft builds a small Vulkan layer
#     (rlft/envs/vk_layer) for lavapipe on first use.
# They are installed with apt-get when this runs as root, or with `sudo -n` when that works without a password;
# otherwise the script prints the exact command to run and stops.
#
# PyTorch: when the venv has no torch yet, `pip install torch==2.13.0` (the CPU wheel on CPU-only machines; a GPU
# machine installs its own CUDA build into .venv first, and this script then keeps it). RLFT_VENV overrides the venv
# directory (default .venv).
set -euo pipefail
cd "$(dirname "$0")/.."
extras="${1:-}"
venv="${RLFT_VENV:-.venv}"

pkgs="libegl1 libegl-mesa0 libgl1-mesa-dri libopengl0 libgl1"
case ",$extras," in
  *,maniskill,*) pkgs="$pkgs libvulkan1 mesa-vulkan-drivers libvulkan-dev gcc libc6-dev" ;;
esac
missing=""
for p in $pkgs; do
  dpkg -s "$p" >/dev/null 2>&1 || missing="$missing $p"
done
if [ -n "$missing" ]; then
  apt_cmd="apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends$missing"
  if [ "$(id -u)" = 0 ]; then
    echo "+ $apt_cmd"
    bash -c "$apt_cmd"
  elif command -v sudo >/dev/null 2>&1 && sudo -n true 2>/dev/null; then
    echo "+ sudo $apt_cmd"
    sudo -n bash -c "$apt_cmd"
  else
    echo "rlft setup: missing system packages:$missing" >&2
    echo "run this as root, then run this script again:" >&2
    echo "  $apt_cmd" >&2
    exit 1
  fi
fi

[ -x "$venv/bin/python" ] || python3 -m venv "$venv"
"$venv/bin/python" -c "import torch" 2>/dev/null || "$venv/bin/pip" install -q torch==2.13.0
spec="."
[ -z "$extras" ] || spec=".[$extras]"
"$venv/bin/pip" install -q -e "$spec"
echo "rlft is installed in $venv (activate it with: . $venv/bin/activate)"
