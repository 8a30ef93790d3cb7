"""Write ``.wheelhouse/constraints.txt`` pinning qpq-core to the wheel just built.

Every tox env that needs qpq-core installs with ``-c`` this file, so pip
takes the Rust extension from our own build by direct reference and never
looks the name up on an index (where someone else could publish it).
"""

from __future__ import annotations

import hashlib
import sys
from pathlib import Path


def main() -> int:
    """Write the constraints file; fail unless exactly one qpq-core wheel exists."""
    wheelhouse = Path(sys.argv[1] if len(sys.argv) > 1 else ".wheelhouse").resolve()
    wheels = sorted(wheelhouse.glob("qpq_core-*.whl"))
    if len(wheels) != 1:
        print(f"expected one qpq-core wheel in {wheelhouse}, found {len(wheels)}", file=sys.stderr)
        return 1
    # The digest makes a rebuilt wheel a new requirement: tox re-installs it
    # into existing envs instead of keeping the stale build of the same version.
    digest = hashlib.sha256(wheels[0].read_bytes()).hexdigest()
    constraint = f"qpq-core @ {wheels[0].as_uri()}#sha256={digest}\n"
    (wheelhouse / "constraints.txt").write_text(constraint, "utf-8")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
