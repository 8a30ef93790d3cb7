"""The end-to-end 1:1 phase in a group of each ciphersuite: the default
(0x0001) and the post-quantum X-Wing suite (0x004D).

The ``pair`` phase of ``tox -e bench`` (send, then the receiver's
``Client.follow()`` yields it; sequential), qpq only, once with each suite,
each on a fresh server; prints p50 and p99 latency in milliseconds::

    tox -e bench-pq                     # 200 messages per suite
    tox -e bench-pq -- --quick          # 20
"""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import tempfile
from pathlib import Path

from bench._qpq import QpqMessenger
from bench._workload import Counts, pair
from qpq_client import Suite


async def measure(suite: Suite, counts: Counts) -> tuple[float, float, str]:
    with tempfile.TemporaryDirectory(prefix=f"qpq-bench-{suite.label}-") as workdir:
        async with QpqMessenger.running(Path(workdir), suite) as messenger:
            measured = await pair(messenger, counts)
    return measured.values["p50"], measured.values["p99"], measured.note


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="20 messages per suite")
    args = parser.parse_args()
    counts = Counts.quick() if args.quick else Counts.full()
    counts = dataclasses.replace(counts, pair_messages=20 if args.quick else 200)
    print(f"{'suite':<8} {'p50 ms':>8} {'p99 ms':>8}  note", flush=True)
    for suite in Suite:
        p50, p99, note = asyncio.run(measure(suite, counts))
        print(f"{suite.label:<8} {p50:8.1f} {p99:8.1f}  {note}", flush=True)


if __name__ == "__main__":
    main()
