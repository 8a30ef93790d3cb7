"""Print the third-party requirements of every package under packages/.

The Docker builder's dependency-cache layer runs this over the copied
package manifests, so that layer is rebuilt only when a manifest changes.
Requirements on the project's own packages (``qpq-*``) are left out: those
are built from source in a later layer. Optional extras count too (the
image installs ``qpq-server[postgres]``).
"""

from __future__ import annotations

import re
import sys
import tomllib
from pathlib import Path


def third_party_requirements(packages_dir: Path) -> list[str]:
    """Sorted, de-duplicated non-qpq requirements (extras included) of every package manifest."""
    found: set[str] = set()
    for manifest in sorted(packages_dir.glob("*/pyproject.toml")):
        project = tomllib.loads(manifest.read_text("utf-8")).get("project", {})
        extras = project.get("optional-dependencies", {}).values()
        for requirement in [*project.get("dependencies", []), *(r for e in extras for r in e)]:
            name = re.split(r"[\s<>=!~;\[(]", requirement, maxsplit=1)[0]
            if not name.lower().replace("_", "-").startswith("qpq-"):
                found.add(requirement)
    return sorted(found)


def main() -> int:
    """Print one requirement per line for ``pip wheel -r``."""
    packages_dir = Path(sys.argv[1] if len(sys.argv) > 1 else "packages")
    for requirement in third_party_requirements(packages_dir):
        print(requirement)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
