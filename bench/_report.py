"""The report: bench/REPORT.md, the latency plot, and the summary printed at the end."""

from __future__ import annotations

import contextlib
import datetime
import importlib.metadata
import math
import os
import platform
from dataclasses import dataclass, field
from pathlib import Path

from bench._scale import Scale, ScaleStep
from bench._scripts import MlsRow, ScriptRow
from bench._transport import REFERENCES, Transport
from bench._workload import Counts

#: What each lever on the message path gave, measured in before/after pairs
#: on its own (bench/LEVERS.md); the full run's report carries it.
LEVERS = Path(__file__).resolve().parent / "LEVERS.md"


#: The project's goals (DESIGN.md, "Performance targets"), by row label prefix:
#: how many times better than the reference qpq must be, or (``max_ms``) the
#: most its figure may be. Rows without one are reported without a goal.
@dataclass(frozen=True, slots=True)
class Goal:
    times: float | None = None
    max_ms: float | None = None

    def text(self) -> str:
        return f"≥ {self.times:g}x" if self.times is not None else f"≤ {self.max_ms:g} ms"

    def met(self, comparison: Comparison) -> bool:
        if self.times is not None:
            return comparison.better >= self.times
        return self.max_ms is not None and comparison.qpq <= self.max_ms


GOALS: tuple[tuple[str, Goal], ...] = (
    ("1:1 sequential, latency p50", Goal(times=5.0)),
    ("1 sender,", Goal(times=10.0)),
    ("fan-out,", Goal(times=3.0)),
    ("server CPU per 1:1 message", Goal(max_ms=1.5)),
    ("server CPU per extra recipient", Goal(max_ms=0.3)),
)
#: How the floor of a 1:1 message counts a push: one way, half a round trip.
PUSH_SHARE_OF_A_CALL = 0.5


def goal_of(label: str) -> Goal | None:
    return next((goal for prefix, goal in GOALS if label.startswith(prefix)), None)


VERSIONS = (
    "qpq-proto",
    "qpq-core",
    "qpq-server",
    "qpq-client",
    "aioquic",
    "sqlcipher3",
    "matrix-synapse",
    "matrix-nio",
    "qh3",
    "grpcio",
)


@dataclass(frozen=True, slots=True)
class Comparison:
    """One figure of qpq beside the same figure of the reference, measured in this run."""

    phase: str
    label: str
    unit: str
    qpq: float
    reference: float
    lower_is_better: bool

    @property
    def better(self) -> float:
        """How many times better qpq is (above 1) or worse (below 1)."""
        if self.qpq == 0 or self.reference == 0 or math.isnan(self.qpq * self.reference):
            return float("nan")
        return self.reference / self.qpq if self.lower_is_better else self.qpq / self.reference


@dataclass(frozen=True, slots=True)
class Machine:
    cpu: str
    cores: int
    online: int
    memory_gib: float
    python: str
    versions: dict[str, str]

    @classmethod
    def here(cls) -> Machine:
        cpu = platform.processor() or platform.machine()
        with contextlib.suppress(OSError):
            for line in Path("/proc/cpuinfo").read_text().splitlines():
                if line.startswith("model name"):
                    cpu = line.split(":", 1)[1].strip()
                    break
        memory = 0.0
        with contextlib.suppress(OSError):
            for line in Path("/proc/meminfo").read_text().splitlines():
                if line.startswith("MemTotal:"):
                    memory = int(line.split()[1]) / 1024 / 1024
        versions = {}
        for name in VERSIONS:
            try:
                versions[name] = importlib.metadata.version(name)
            except importlib.metadata.PackageNotFoundError:
                versions[name] = "not installed"
        return cls(
            cpu,
            len(os.sched_getaffinity(0)),
            os.cpu_count() or 0,
            memory,
            platform.python_version(),
            versions,
        )


@dataclass(slots=True)
class Results:
    """Everything one run measured."""

    mode: str
    counts: Counts
    started: datetime.datetime
    load_before: tuple[float, float, float]
    load_after: tuple[float, float, float] = (0.0, 0.0, 0.0)
    seconds: float = 0.0
    settings: dict[str, str] = field(default_factory=dict)
    comparisons: list[Comparison] = field(default_factory=list)
    notes: dict[str, dict[str, str]] = field(default_factory=dict)
    curves: dict[str, list[tuple[float, float, float]]] = field(default_factory=dict)
    transport: Transport | None = None
    mls: list[MlsRow] | None = None
    mls_native: bool = True
    scale: list[Scale] = field(default_factory=list)
    storage: list[ScriptRow] | None = None
    #: One small write and fsync in this run's directory, median ms.
    fsync_ms: float | None = None
    cli: list[ScriptRow] | None = None
    errors: dict[str, str] = field(default_factory=dict)


# ---- formatting ---------------------------------------------------------------------


def number(value: float | None, unit: str = "") -> str:
    if value is None or math.isnan(value):
        return "n/a"
    if unit in ("ms", "MB/s", "KiB", "µs", "MiB") or abs(value) < 100:
        return f"{value:,.1f}" if abs(value) >= 1 or value == 0 else f"{value:.2f}"
    return f"{value:,.0f}"


def times(value: float | None) -> str:
    if value is None or math.isnan(value):
        return "n/a"
    return f"{value:.2f}x"


def _table(header: list[str], rows: list[list[str]], align: str) -> list[str]:
    lines = ["| " + " | ".join(header) + " |"]
    lines.append("|" + "|".join("---:" if a == "r" else "---" for a in align) + "|")
    lines += ["| " + " | ".join(row) + " |" for row in rows]
    return lines


def summary_lines(results: Results) -> list[str]:
    rows = []
    for c in results.comparisons:
        goal = goal_of(c.label)
        verdict = "" if goal is None else f"{goal.text()}: {'met' if goal.met(c) else 'not yet'}"
        rows.append(
            [
                c.label,
                c.unit,
                number(c.qpq, c.unit),
                number(c.reference, c.unit),
                times(c.better),
                verdict,
            ]
        )
    return _table(
        ["measurement", "unit", "qpq", "Synapse", "qpq better by", "goal"], rows, "llrrrl"
    )


def extra_recipient_rows(comparisons: list[Comparison], recipients: int) -> list[Comparison]:
    """Server CPU per extra recipient: a fan-out message's over a 1:1 message's, per
    recipient beyond the first (both rows measured in this run)."""
    one = next((c for c in comparisons if c.label == "server CPU per 1:1 message"), None)
    many = next((c for c in comparisons if c.label.startswith("server CPU per fan-out")), None)
    if one is None or many is None or recipients < 2:
        return []
    return [
        Comparison(
            "fanout",
            "server CPU per extra recipient",
            "ms",
            (many.qpq - one.qpq) / (recipients - 1),
            (many.reference - one.reference) / (recipients - 1),
            True,
        )
    ]


@dataclass(frozen=True, slots=True)
class Floor:
    """What a 1:1 message cannot cost less than on this stack, from this run's figures."""

    call_ms: float  # a raw aioquic call (new stream, request, answer), sequential
    push_ms: float  # the server's push to the receiver: one way
    fsyncs: int  # the sender's before it publishes, the server's before it answers
    fsync_ms: float
    mls_ms: float  # encrypt and decrypt in a 2-member group

    @property
    def total_ms(self) -> float:
        return self.call_ms + self.push_ms + self.fsyncs * self.fsync_ms + self.mls_ms


def floor_of(results: Results) -> Floor | None:
    """The floor, where the transport, MLS and fsync figures of this run are all in."""
    if results.transport is None or results.mls is None or results.fsync_ms is None:
        return None
    raw = next(
        (
            row.references.get("raw aioquic")
            for row in results.transport.rows
            if row.pattern == "small call, sequential"
        ),
        None,
    )
    mls = {row.operation: row.python_us for row in results.mls if row.size == 2}
    if not raw or "encrypt" not in mls or "decrypt" not in mls:
        return None
    call_ms = 1000 / raw
    return Floor(
        call_ms=call_ms,
        push_ms=call_ms * PUSH_SHARE_OF_A_CALL,
        fsyncs=2,
        fsync_ms=results.fsync_ms,
        mls_ms=(mls["encrypt"] + mls["decrypt"]) / 1000,
    )


def _floor_lines(results: Results, floor: Floor) -> list[str]:
    p50 = next(
        (c.qpq for c in results.comparisons if c.label.startswith("1:1 sequential, latency p50")),
        None,
    )
    out = [
        "## The floor of a 1:1 message",
        "",
        "What one 1:1 message cannot cost less than on this stack, from figures of this run: "
        "a raw aioquic call (the transport section's sequential echo), a push (half a call: "
        "one way), the fsyncs the durability rules put on the path (the sender's before it "
        "publishes, the server's COMMIT before it answers; the receiver's comes after it "
        "shows the message) and MLS encrypt and decrypt in a 2-member group (the MLS "
        "section). The goal is qpq's p50 within 2x of it.",
        "",
    ]
    rows = [
        ["raw aioquic call", number(floor.call_ms, "ms")],
        ["push (one way)", number(floor.push_ms, "ms")],
        [
            f"{floor.fsyncs} fsyncs ({number(floor.fsync_ms, 'ms')} ms each)",
            number(floor.fsyncs * floor.fsync_ms, "ms"),
        ],
        ["MLS encrypt + decrypt", number(floor.mls_ms, "ms")],
        ["floor", number(floor.total_ms, "ms")],
    ]
    if p50 is not None:
        ratio = p50 / floor.total_ms
        verdict = "met" if ratio <= 2 else "not yet"
        rows.append(["qpq 1:1 p50 over the floor (goal ≤ 2x)", f"{ratio:.2f}x ({verdict})"])
    out += _table(["part", "ms"], rows, "lr")
    out.append("")
    return out


# ---- REPORT.md -------------------------------------------------------------------------


def markdown(results: Results, machine: Machine, plot: Path | None) -> str:
    out: list[str] = ["# qpq beside Synapse + matrix-nio: benchmark report", ""]
    lb, la = results.load_before, results.load_after
    out += [
        f"Written by `tox -e bench` (`bench/run.py`, {results.mode}) on "
        f"{results.started:%Y-%m-%d %H:%M} UTC in {results.seconds / 60:.1f} min. "
        "Every figure stands beside its reference measured in the same run; compare "
        "ratios, never absolute figures from different runs.",
        "",
        "## Machine",
        "",
        f"- CPU: {machine.cpu}, {machine.cores} cores usable ({machine.online} online), "
        f"{machine.memory_gib:.1f} GiB RAM; shared with other work",
        f"- load average (1, 5, 15 min): before {lb[0]:.2f} {lb[1]:.2f} {lb[2]:.2f}, "
        f"after {la[0]:.2f} {la[1]:.2f} {la[2]:.2f}",
        f"- Python {machine.python}; "
        + ", ".join(f"{name} {version}" for name, version in machine.versions.items()),
        "",
    ]
    if results.errors:
        out += ["## Sections that failed", ""]
        out += [f"- **{name}**: {error}" for name, error in results.errors.items()]
        out.append("")
    if results.comparisons:
        out += [
            "## Summary: qpq beside Synapse on the same workload",
            "",
            "\"qpq better by\" is the reference's figure over qpq's for latencies and CPU, "
            "qpq's over the reference's for rates: above 1 qpq is ahead. The goals are "
            'DESIGN.md\'s ("Performance targets"): a ratio to Synapse, or a most for the '
            "server's CPU; the 1:1 latency's other goal, within 2x of the stack's floor, is "
            "in its own section below.",
            "",
            *summary_lines(results),
            "",
            "## Systems under test",
            "",
        ]
        out += [f"- **{name}**: {text}" for name, text in results.settings.items()]
        out += ["", "Both run their clients in this one asyncio process on loopback.", ""]
        out += _workload_lines(results)
    if results.curves:
        out += _curve_lines(results, plot)
    if results.transport is not None:
        out += _transport_lines(results.transport)
    if results.mls is not None:
        out += _mls_lines(results.mls, results.mls_native)
    floor = floor_of(results)
    if floor is not None:
        out += _floor_lines(results, floor)
    if results.scale:
        out += _scale_lines(results.scale)
    if results.storage is not None:
        out += _storage_lines(results.storage)
    if results.cli is not None:
        out += _cli_lines(results.cli)
    if LEVERS.exists():
        # Hand-written: each lever's before/after pairs, measured on their own.
        out += ["", LEVERS.read_text(encoding="utf-8").rstrip()]
    return "\n".join(out) + "\n"


_PHASE_TEXT = {
    "pair": "1:1, sequential: one message, wait until the receiver's loop yields it, the next.",
    "group": "A group, sequential: latency until the last of the other members has it.",
    "bulk": "One sender, messages to one receiver as fast as the sender may send.",
    "fanout": "Messages into a group as fast as the sender may send; latency until all have it.",
    "big": "A big group, sequential, while a steady background load runs.",
    "load": "A sender at fixed rates; latency counts from when each message was due.",
}


def _workload_lines(results: Results) -> list[str]:
    c = results.counts
    out = [
        "## Workload",
        "",
        f"Same counts on both systems: 1:1 {c.pair_messages} messages; a {c.group_size}-member "
        f"group {c.group_messages}; bulk {c.bulk_messages} with up to {c.in_flight} in flight; "
        f"fan-out {c.fanout_messages} into the {c.group_size}-member group, up to "
        f"{c.in_flight} in flight; a {c.big_group_size}-member group {c.big_group_messages} "
        f"with a 1:1 background load at {c.background_rate:g} msg/s; fixed rates "
        f"{', '.join(f'{r:g}' for r in c.load_rates)} msg/s for {c.load_seconds:g} s each "
        f"(at least {c.load_min_messages} messages). {c.warmup} untimed warm-up messages "
        "before each sequential run. Message bodies are 100 characters. Senders never run "
        "a receive loop; receivers never send. Server CPU is utime + stime of the server "
        "process from /proc before and after the phase, over the messages delivered.",
        "",
    ]
    for phase, notes in results.notes.items():
        out.append(f"- **{phase}**: {_PHASE_TEXT.get(phase, '')}")
        out += [f"  - {system}: {note}" for system, note in notes.items() if note]
    out.append("")
    return out


def _curve_lines(results: Results, plot: Path | None) -> list[str]:
    out = ["## Latency against offered load", ""]
    if plot is not None:
        out += [f"![1:1 latency against offered load]({plot.name})", ""]
    systems = list(results.curves)
    header = ["offered msg/s"]
    for system in systems:
        header += [f"{system} p50 ms", f"{system} p99 ms"]
    rates = sorted({point[0] for curve in results.curves.values() for point in curve})
    rows = []
    for rate in rates:
        row = [f"{rate:g}"]
        for system in systems:
            point = next((p for p in results.curves[system] if p[0] == rate), None)
            row += [number(point[1], "ms"), number(point[2], "ms")] if point else ["n/a", "n/a"]
        rows.append(row)
    out += _table(header, rows, "r" * len(header))
    out.append("")
    return out


def _transport_lines(transport: Transport) -> list[str]:
    out = [
        "## Transport",
        "",
        "qpq calls and raw aioquic come from `packages/qpq-server/bench/bench_server.py` "
        "(its calls section, run here); qh3 and grpcio echo the same bytes on loopback with "
        "its timing helpers: one QUIC stream per call (qh3), a unary call over TLS on TCP "
        "(grpcio). Each server is its own process. The ratio is qpq over the reference.",
        "",
    ]
    header = ["pattern", "unit", "qpq call", "qpq", *REFERENCES]
    header += [f"qpq / {r}" for r in REFERENCES]
    rows = []
    for row in transport.rows:
        values = [row.references.get(r) for r in REFERENCES]
        ratios = [times(row.qpq / v) if row.qpq is not None and v else "n/a" for v in values]
        rows.append(
            [row.pattern, row.unit, row.qpq_call, number(row.qpq, row.unit)]
            + [number(v, row.unit) for v in values]
            + ratios
        )
    out += _table(header, rows, "lll" + "r" * (len(header) - 3))
    out += ["", "bench_server's own table:", ""]
    out += _script_lines(transport.script_rows)
    return out


def _script_lines(rows: list[ScriptRow]) -> list[str]:
    table = [
        [
            row.name,
            row.unit,
            number(row.value, row.unit),
            number(row.baseline, row.unit),
            times(row.ratio),
            row.baseline_label,
            row.note,
        ]
        for row in rows
    ]
    out = _table(
        ["measurement", "unit", "qpq", "baseline", "ratio", "baseline is", "note"], table, "llrrrll"
    )
    out.append("")
    return out


def _mls_lines(rows: list[MlsRow], native: bool) -> list[str]:
    out = [
        "## MLS",
        "",
        "`packages/qpq-core/bench/bench_mls.py`, run here: each operation through the "
        "Python binding beside the same engine without Python (the crate's `native_bench` "
        "example), in µs; the ratio is Python over native.",
        "",
    ]
    if not native:
        out += ["(native figures skipped in --quick: they need a cargo build)", ""]
    table = [
        [
            str(r.size),
            r.operation,
            number(r.python_us, "µs"),
            number(r.native_us, "µs"),
            times(r.ratio),
        ]
        for r in rows
    ]
    out += _table(["members", "operation", "Python µs", "native µs", "ratio"], table, "rlrrr")
    out.append("")
    return out


def _scale_lines(scales: list[Scale]) -> list[str]:
    out = [
        "## Scale",
        "",
        "Idle clients held open, each with a receive pending (qpq: a QUIC connection that "
        "proved its identity and holds a subscribe stream open, as `Client.follow()` does; "
        "Synapse: a registered user's `/sync` long-poll, as `sync_forever` does), then the 1:1 "
        "sequential latency measured again between two library clients. Memory per client "
        "is the server's RSS growth over the idle clients. The reference for each step is "
        "the other system at the same step.",
        "",
    ]
    by_size: dict[int, dict[str, ScaleStep]] = {}
    for scale in scales:
        for step in scale.steps:
            by_size.setdefault(step.idle, {})[scale.system] = step
    systems = [s.system for s in scales]
    header = ["idle clients"]
    for system in systems:
        header += [
            f"{system} KiB/client",
            f"{system} RSS MiB",
            f"{system} p50 ms",
            f"{system} p99 ms",
        ]
    rows = []
    for size in sorted(by_size):
        row = [f"{size:,}"]
        for system in systems:
            found = by_size[size].get(system)
            if found is None:
                row += ["—"] * 4
            else:
                row += [
                    number(found.per_client_kib, "KiB"),
                    number(found.server_rss_mib, "MiB"),
                    number(found.p50, "ms"),
                    number(found.p99, "ms"),
                ]
        rows.append(row)
    out += _table(header, rows, "r" * len(header))
    out.append("")
    for scale in scales:
        opened = ", ".join(f"{s.idle:,} in {s.open_seconds:.0f} s" for s in scale.steps)
        out.append(
            f"- {scale.system}: idle clients {scale.held_by}, {scale.step_budget:.0f} s "
            f"budget per step; opened {opened or 'none'}; {scale.stopped}"
        )
    out.append("")
    return out


def _storage_lines(rows: list[ScriptRow]) -> list[str]:
    out = [
        "## Storage",
        "",
        "`packages/qpq-server/bench/bench_server.py`'s store section, run here: the server's "
        "SQLCipher store beside the same store on plain SQLite, in process.",
        "",
    ]
    return out + _script_lines(rows)


def _cli_lines(rows: list[ScriptRow]) -> list[str]:
    out = [
        "## One command",
        "",
        "`bench/_cli.py`: a `qpq` command as a person or a script runs it, a new process each "
        "time, against a server on loopback; through a running `qpq daemon` it is a JSON-RPC "
        "call on the profile's socket.",
        "",
    ]
    return out + _script_lines(rows)


# ---- the plot ----------------------------------------------------------------------------


def plot(curves: dict[str, list[tuple[float, float, float]]], path: Path) -> None:
    """Latency p50 and p99 against offered load, one line pair per system."""
    import matplotlib

    matplotlib.use("Agg")
    from matplotlib import pyplot

    figure, axes = pyplot.subplots(figsize=(8, 5))
    for system, points in curves.items():
        rates = [p[0] for p in points]
        line = axes.plot(rates, [p[1] for p in points], marker="o", label=f"{system} p50")[0]
        axes.plot(
            rates,
            [p[2] for p in points],
            marker="s",
            linestyle="--",
            color=line.get_color(),
            label=f"{system} p99",
        )
    axes.set_xscale("log")
    axes.set_yscale("log")
    axes.set_xlabel("offered load, messages per second (one sender, 1:1)")
    axes.set_ylabel("latency until the receiver's loop yields it, ms")
    axes.set_title("1:1 latency against offered load (one run, same machine)")
    axes.grid(True, which="both", alpha=0.3)
    axes.legend()
    figure.tight_layout()
    figure.savefig(path, dpi=120)
    pyplot.close(figure)
