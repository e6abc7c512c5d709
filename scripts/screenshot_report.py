"""Screenshot an ``rlft report`` HTML page in headless Chromium (to check that figures and videos render).

    python scripts/screenshot_report.py runs/<run>/report/index.html --out report.png [--width 1400 --height 6000]

Needs the Debian/Ubuntu package ``chromium``; when it is missing and we are root, the script installs it with
apt-get (it is a ~100 MB download, so it is not part of the project's setup or of CI). The page is loaded from a
``file://`` URL with a virtual-time budget so images and video posters load before the capture; ``--height`` is the
window height, i.e. how much of the page the PNG shows (use several runs with ``--scroll`` to page through long
reports).
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path


def find_chromium(install: bool = True) -> str:
    for name in ("chromium", "chromium-browser", "google-chrome", "google-chrome-stable"):
        path = shutil.which(name)
        if path:
            return path
    if not install:
        sys.exit("error: no chromium found (apt-get install chromium)")
    if os.geteuid() != 0:
        sys.exit("error: chromium is not installed and we are not root: run 'sudo apt-get install chromium'")
    print("+ apt-get install chromium (once)", file=sys.stderr)
    env = dict(os.environ, DEBIAN_FRONTEND="noninteractive")
    subprocess.run(["apt-get", "update", "-qq"], check=True, env=env, stdout=sys.stderr)
    subprocess.run(
        ["apt-get", "install", "-y", "-qq", "--no-install-recommends", "chromium"],
        check=True,
        env=env,
        stdout=sys.stderr,
    )
    return find_chromium(install=False)


def screenshot(
    html: Path, out: Path, width: int = 1400, height: int = 6000, scroll: int = 0, budget_ms: int = 8000
) -> Path:
    """Render ``html`` at ``width`` x ``height`` (after scrolling ``scroll`` pixels) into the PNG ``out``."""
    chromium = find_chromium()
    html = html.resolve()
    url = html.as_uri()
    with tempfile.TemporaryDirectory() as tmp:
        if scroll:  # a tiny wrapper page that scrolls the report in an iframe-free way: load it with a fragment offset
            wrapper = Path(tmp) / "scroll.html"
            wrapper.write_text(
                f"<html><body style='margin:0;overflow:hidden'><iframe src='{url}' "
                f"style='border:0;width:{width}px;height:{height + scroll}px;margin-top:-{scroll}px'>"
                f"</iframe></body></html>"
            )
            url = wrapper.as_uri()
        out = out.resolve()
        out.parent.mkdir(parents=True, exist_ok=True)
        cmd = [
            chromium,
            "--headless=new",
            "--no-sandbox",
            "--disable-gpu",
            "--hide-scrollbars",
            "--allow-file-access-from-files",
            f"--user-data-dir={tmp}/profile",
            f"--window-size={width},{height}",
            f"--virtual-time-budget={budget_ms}",
            f"--screenshot={out}",
            url,
        ]
        r = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
        if r.returncode != 0 or not out.is_file():
            sys.exit(f"error: chromium failed ({r.returncode}): {r.stderr[-2000:]}")
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("html", type=Path, help="the report's index.html")
    ap.add_argument("--out", type=Path, default=None, help="PNG file (default: <html dir>/screenshot.png)")
    ap.add_argument("--width", type=int, default=1400)
    ap.add_argument("--height", type=int, default=6000, help="window height = height of the capture in pixels")
    ap.add_argument("--scroll", type=int, default=0, help="start the capture this many pixels down the page")
    ns = ap.parse_args(argv)
    if not ns.html.is_file():
        sys.exit(f"error: {ns.html}: no such file")
    out = screenshot(ns.html, ns.out or ns.html.parent / "screenshot.png", ns.width, ns.height, ns.scroll)
    print(out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
