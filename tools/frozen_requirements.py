"""Write the exact third-party distributions of this environment, pinned.

``tox -e audit`` hands the file to pip-audit: our own packages (``qpq-*``)
are on no index, so they are left out rather than reported as unauditable.
"""

from __future__ import annotations

import sys
from importlib import metadata
from pathlib import Path


def main() -> int:
    """Write ``name==version`` lines for every non-qpq distribution."""
    lines = sorted(
        {
            f"{dist.metadata['Name']}=={dist.version}"
            for dist in metadata.distributions()
            if not dist.metadata["Name"].lower().replace("_", "-").startswith("qpq-")
        },
        key=str.lower,
    )
    Path(sys.argv[1]).write_text("\n".join(lines) + "\n", "utf-8")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
