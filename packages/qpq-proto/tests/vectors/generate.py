"""Write the golden wire vectors: one ``<name>.bin`` per entry of ``VECTORS``.

Run by hand, never by the tests::

    python packages/qpq-proto/tests/vectors/generate.py

The vectors freeze protocol version 1's wire format. Regenerate them only for
a deliberate, reviewed change of a sample value; a change of the bytes of an
existing vector is a wire-format break.
"""

from __future__ import annotations

import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))

from proto_samples import ENCODERS, VECTORS  # noqa: E402


def main() -> None:
    wanted = set()
    for name, (kind, value) in sorted(VECTORS.items()):
        path = HERE / f"{name}.bin"
        data = ENCODERS[kind](value)
        wanted.add(path.name)
        if not path.exists() or path.read_bytes() != data:
            path.write_bytes(data)
            print(f"wrote {path.name} ({len(data)} bytes)")
    for stale in sorted(p for p in HERE.glob("*.bin") if p.name not in wanted):
        stale.unlink()
        print(f"removed {stale.name}")
    print(f"{len(wanted)} vectors in {HERE}")


if __name__ == "__main__":
    main()
