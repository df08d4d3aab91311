"""Open a `bench report --html` file in headless Chromium: check that every image decoded
and take a screenshot.

    python tools/check_html.py report.html [--screenshot report.png] [--chromium /usr/bin/chromium]

Needs Debian's chromium (apt-get install chromium chromium-driver). The page sets
<body data-images-loaded=N> on load (images complete with a natural width); the check
reads it from Chromium's DOM dump and compares with the number of <img> elements.
Exit 0 when all images rendered, 1 otherwise.
"""

from __future__ import annotations

import argparse
import re
import shutil
import subprocess
import sys
from pathlib import Path

FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--hide-scrollbars",
         "--virtual-time-budget=5000"]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("html")
    parser.add_argument("--screenshot", help="PNG to write (default: next to the HTML)")
    parser.add_argument("--chromium", default=shutil.which("chromium") or "/usr/bin/chromium")
    args = parser.parse_args()
    page = Path(args.html).resolve()
    url = page.as_uri()
    dom = subprocess.run([args.chromium, *FLAGS, "--dump-dom", url], capture_output=True,
                         text=True, timeout=120, check=True).stdout
    images = len(re.findall(r"<img\b", dom))
    loaded = re.search(r'data-images-loaded="(\d+)"', dom)
    rendered = int(loaded.group(1)) if loaded else 0
    shot = Path(args.screenshot or page.with_suffix(".png"))
    subprocess.run([args.chromium, *FLAGS, f"--screenshot={shot}", "--window-size=1400,2400",
                    url], capture_output=True, timeout=120, check=True)
    ok = images > 0 and rendered == images and shot.exists() and shot.stat().st_size > 10_000
    print(f"{page.name}: {rendered}/{images} images rendered in Chromium; screenshot {shot} "
          f"({shot.stat().st_size if shot.exists() else 0} bytes): {'ok' if ok else 'FAIL'}")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
