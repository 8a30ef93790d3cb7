"""The packages' own benchmark scripts, loaded from their files and called.

``packages/qpq-server/bench/bench_server.py`` measures the transport beside
raw aioquic and SQLCipher beside plain SQLite; ``packages/qpq-core/bench/
bench_mls.py`` measures the MLS binding beside native OpenMLS. They are
scripts, not installed modules: they are loaded by path and their functions
called, so the figures here are theirs, measured in this run.
"""

from __future__ import annotations

import importlib.util
import sys
from dataclasses import dataclass
from functools import cache
from pathlib import Path
from types import ModuleType
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
BENCH_SERVER = ROOT / "packages" / "qpq-server" / "bench" / "bench_server.py"
BENCH_MLS = ROOT / "packages" / "qpq-core" / "bench" / "bench_mls.py"


@cache
def load(path: Path) -> ModuleType:
    """Import the script at ``path`` as a module (once)."""
    name = f"_bench_script_{path.stem}"
    spec = importlib.util.spec_from_file_location(name, path)
    if spec is None or spec.loader is None:
        raise ImportError(f"cannot load {path}")
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module  # its dataclasses look their module up by name
    spec.loader.exec_module(module)
    return module


@dataclass(frozen=True, slots=True)
class ScriptRow:
    """One line of a script's own table: a figure beside its baseline."""

    name: str
    unit: str
    value: float
    baseline: float | None
    baseline_label: str
    note: str

    @property
    def ratio(self) -> float | None:
        if self.baseline is None or self.baseline == 0:
            return None
        return self.value / self.baseline


def server_settings(quick: bool) -> Any:
    """bench_server's own settings, full or quick."""
    settings = load(BENCH_SERVER).Settings
    return settings.quick() if quick else settings.full()


async def server_sections(sections: set[str], quick: bool) -> list[ScriptRow]:
    """Run bench_server's ``sections`` (it starts its own servers) and return its rows."""
    rows = await load(BENCH_SERVER).run(server_settings(quick), sections)
    return [
        ScriptRow(
            str(row.name),
            str(row.unit),
            float(row.value),
            None if row.baseline is None else float(row.baseline),
            str(row.baseline_label),
            str(row.note),
        )
        for row in rows
    ]


async def rate(kind: str, call: Any, quick: bool, *, width: int = 1, bulk: bool = False) -> float:
    """Calls per second with bench_server's own timing helpers and round lengths.

    ``kind`` is "sequential" or "concurrent" (``width`` in flight); ``bulk``
    uses its bulk round length and call cap. The median of its rounds.
    """
    module = load(BENCH_SERVER)
    s = server_settings(quick)
    seconds = s.bulk_round_seconds if bulk else s.round_seconds
    max_ops = 1000 if bulk else s.max_ops_per_round
    results: list[float] = []
    for _ in range(s.rounds):
        if kind == "sequential":
            results.append(float(await module.sequential_rate(call, seconds, max_ops)))
        else:
            results.append(float(await module.concurrent_rate(call, width, seconds, max_ops)))
    results.sort()
    return results[len(results) // 2]


# ---- MLS ---------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class MlsRow:
    size: int
    operation: str
    python_us: float
    native_us: float | None

    @property
    def ratio(self) -> float | None:
        return None if not self.native_us else self.python_us / self.native_us


def mls(sizes: tuple[int, ...], with_native: bool) -> list[MlsRow]:
    """bench_mls: each operation through the Python binding beside native OpenMLS."""
    module = load(BENCH_MLS)
    native: dict[int, dict[str, float]] = module.native(list(sizes)) if with_native else {}
    rows: list[MlsRow] = []
    for size in sizes:
        # The repetitions bench_mls's own main() uses for each size.
        reps, messages = (3, 200) if size >= 1000 else (5, 500)
        measured = module.bench(size, reps, messages)
        for operation in ("build", *module.OPS):
            label = f"build({size - 1})" if operation == "build" else str(operation)
            reference = native.get(size, {}).get(operation)
            rows.append(
                MlsRow(
                    size,
                    label,
                    float(measured[operation]),
                    None if reference is None else float(reference),
                )
            )
    return rows
