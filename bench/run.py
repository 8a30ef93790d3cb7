"""qpq beside Synapse + matrix-nio on the same workload, in one run; writes the report.

Run through tox (the ``bench`` env installs Synapse, matrix-nio, qh3, grpcio
and matplotlib; no qpq package depends on them)::

    tox -e bench                                   # full run: bench/REPORT.md, bench/latency.png
    tox -e bench -- --quick                        # small counts, a smoke run
    tox -e bench -- --quick --only pair --only mls # some phases only

A full run writes into ``bench/``; a ``--quick`` or ``--only`` run writes
into ``bench/out/`` (not committed) unless ``--output`` says otherwise, so a
smoke run never replaces the committed report.

Phases (``--only``, repeatable): the messaging phases run on both systems,
one after the other, alternating which goes first: pair (1:1 sequential),
group (20 members, sequential), bulk (one sender to one receiver), fanout
(into the 20-member group), big (100 members under a background load),
load (fixed rates, the plot); then transport, mls, scale, storage, and cli
(one `qpq` command's latency, with and without `qpq daemon`).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import datetime
import os
import sys
import tempfile
import time
import traceback
from collections.abc import AsyncIterator
from pathlib import Path

from bench import _cli, _report, _scale, _scripts, _transport
from bench._measure import fsync_ms
from bench._messenger import Messenger
from bench._qpq import QpqMessenger
from bench._report import Comparison, Machine, Results
from bench._synapse import SynapseMessenger
from bench._workload import PHASES, Counts, Measured, metrics

HERE = Path(__file__).resolve().parent
OTHER = ("transport", "mls", "scale", "storage", "cli")
ALL = (*PHASES, *OTHER)
MLS_SIZES_FULL = (2, 10, 100, 1000)
MLS_SIZES_QUICK = (2, 10)


def _fail(results: Results, section: str, error: BaseException) -> None:
    traceback.print_exception(error, file=sys.stderr)
    results.errors[section] = f"{type(error).__name__}: {error}".splitlines()[0]


async def _messaging(
    results: Results, messengers: tuple[Messenger, Messenger], phases: list[str]
) -> None:
    for index, phase in enumerate(phases):
        order = messengers if index % 2 == 0 else messengers[::-1]
        measured: dict[str, Measured] = {}
        started = time.perf_counter()
        try:
            for messenger in order:
                measured[messenger.name] = await PHASES[phase](messenger, results.counts)
        except Exception as error:  # noqa: BLE001 - one phase failing must not lose the others
            _fail(results, phase, error)
            continue
        qpq, reference = measured[messengers[0].name], measured[messengers[1].name]
        for metric in metrics(phase, results.counts):
            results.comparisons.append(
                Comparison(
                    phase,
                    metric.label,
                    metric.unit,
                    qpq.values[metric.key],
                    reference.values[metric.key],
                    metric.lower_is_better,
                )
            )
        notes = {m.name: measured[m.name].note for m in messengers}
        for messenger in messengers:
            problems = messenger.inbox.problems()
            if problems:
                notes[messenger.name] += f"; {problems}"
        results.notes[phase] = notes
        if phase == "load":
            for messenger in messengers:
                results.curves[messenger.name] = measured[messenger.name].curve
        print(f"  {phase}: {time.perf_counter() - started:.0f} s", flush=True)


@contextlib.asynccontextmanager
async def _systems(workdir: Path) -> AsyncIterator[tuple[QpqMessenger, SynapseMessenger]]:
    async with (
        QpqMessenger.running(workdir) as qpq,
        SynapseMessenger.running(workdir) as synapse,
    ):
        yield qpq, synapse


async def _run(results: Results, selected: list[str], quick: bool, workdir: Path) -> None:
    messaging = [p for p in PHASES if p in selected]
    # The fsync the durability rules put on a message's path, on this run's disk.
    results.fsync_ms = fsync_ms(workdir)
    if messaging or "scale" in selected:
        print("starting qpq-server and Synapse", flush=True)
        async with _systems(workdir) as (qpq, synapse):
            results.settings = {qpq.name: qpq.settings, synapse.name: synapse.settings}
            await _messaging(results, (qpq, synapse), messaging)
            recipients = results.counts.group_size - 1
            results.comparisons += _report.extra_recipient_rows(results.comparisons, recipients)
            if "scale" in selected:
                print("scale", flush=True)
                counts = _scale.ScaleCounts.quick() if quick else _scale.ScaleCounts.full()
                try:
                    results.scale.append(await _scale.qpq(qpq, counts))
                    results.scale.append(await _scale.synapse(synapse, counts))
                except Exception as error:  # noqa: BLE001 - keep what the other sections measured
                    _fail(results, "scale", error)
    if "transport" in selected:
        print("transport", flush=True)
        try:
            results.transport = await _transport.run(workdir, quick)
        except Exception as error:  # noqa: BLE001 - keep what the other sections measured
            _fail(results, "transport", error)
    if "mls" in selected:
        print("mls", flush=True)
        results.mls_native = not quick
        try:
            sizes = MLS_SIZES_QUICK if quick else MLS_SIZES_FULL
            results.mls = _scripts.mls(sizes, with_native=results.mls_native)
        except Exception as error:  # noqa: BLE001 - keep what the other sections measured
            _fail(results, "mls", error)
    if "storage" in selected:
        print("storage", flush=True)
        try:
            results.storage = await _scripts.server_sections({"store"}, quick)
        except Exception as error:  # noqa: BLE001 - keep what the other sections measured
            _fail(results, "storage", error)
    if "cli" in selected:
        print("cli", flush=True)
        try:
            results.cli = await _cli.run(workdir, quick)
        except Exception as error:  # noqa: BLE001 - keep what the other sections measured
            _fail(results, "cli", error)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="small counts, a smoke run")
    parser.add_argument(
        "--only", choices=ALL, action="append", metavar="PHASE", help=f"one of {', '.join(ALL)}"
    )
    parser.add_argument("--output", type=Path, help="where REPORT.md and latency.png go")
    args = parser.parse_args(argv)
    selected = [p for p in ALL if p in (args.only or ALL)]
    full = not args.quick and not args.only
    output: Path = args.output or (HERE if full else HERE / "out")
    options = (["--quick"] if args.quick else []) + [f"--only {p}" for p in args.only or ()]
    mode = " ".join(options) or "full run"
    results = Results(
        mode=mode,
        counts=Counts.quick() if args.quick else Counts.full(),
        started=datetime.datetime.now(datetime.UTC),
        load_before=os.getloadavg(),
    )
    started = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="qpq-bench-") as tmp:
        asyncio.run(_run(results, selected, args.quick, Path(tmp)))
    results.seconds = time.perf_counter() - started
    results.load_after = os.getloadavg()
    output.mkdir(parents=True, exist_ok=True)
    plot = None
    if results.curves:
        plot = output / "latency.png"
        _report.plot(results.curves, plot)
    report = output / "REPORT.md"
    report.write_text(_report.markdown(results, Machine.here(), plot))
    print()
    print("\n".join(_report.summary_lines(results)))
    print(f"\n{report} written in {results.seconds / 60:.1f} min")
    for section, error in results.errors.items():
        print(f"FAILED {section}: {error}", file=sys.stderr)
    return 1 if results.errors else 0


if __name__ == "__main__":
    raise SystemExit(main())
