"""Rewrites POT's wheel without its BSP-OT extension, for bench/gpu/prepare.sh.

The extension (`ot/bsp/bsp_wrap*.so`) is most of the wheel, more than the accelerator machine's
carry limit allows, and `ot.sliced` never uses it; `ot/bsp/bsp_ot.py` imports it at import time, so
that import is made to tolerate its absence. Nothing else changes.

    python3 bench/gpu/slim_pot_wheel.py .whl/pot-0.9.7-*.whl
"""

import sys
import zipfile
from pathlib import Path

IMPORT = "from .bsp_wrap import bsp_solve_c, merge_bijections_c\n"
TOLERANT = (
    "try:\n"
    "    " + IMPORT +
    "except ImportError:  # dropped from the wheel carried to the GPU machine (bench/gpu)\n"
    "    bsp_solve_c = merge_bijections_c = None\n"
)


def main() -> None:
    wheel = Path(sys.argv[1])
    slim = wheel.with_suffix(".slim")
    with zipfile.ZipFile(wheel) as source, zipfile.ZipFile(slim, "w", zipfile.ZIP_DEFLATED) as out:
        for entry in source.infolist():
            if entry.filename.startswith("ot/bsp/bsp_wrap"):
                continue
            data = source.read(entry)
            if entry.filename == "ot/bsp/bsp_ot.py":
                text = data.decode()
                if IMPORT not in text:
                    sys.exit(f"{wheel}: ot/bsp/bsp_ot.py does not import bsp_wrap as expected")
                data = text.replace(IMPORT, TOLERANT).encode()
            out.writestr(entry, data)
    slim.replace(wheel)
    print(f"{wheel}: {wheel.stat().st_size / 2**20:.1f} MiB without the BSP-OT extension")


if __name__ == "__main__":
    main()
