"""A client process that stops while it processes a commit, to be killed there.

Run by test_faults_crashes.py as ``python fault_client.py HOME POINT [N]``
with the profile passphrase in ``FAULT_PASSPHRASE``. It opens the profile,
connects and receives; on the ``N``-th commit it processes (default the
first) it prints ``at POINT`` and blocks, holding whatever it has done so
far, until the test kills it with SIGKILL. The points:

- ``processed``: MLS has applied the commit in memory; nothing is stored;
- ``writing``: the commit's changes are written inside the store's
  transaction, which has not committed;
- ``persisted``: the transaction committed; the server has not been told
  (the batch's acknowledgement is not sent).

If no commit comes, it prints ``done`` and exits.
"""

from __future__ import annotations

import asyncio
import os
import sys
from pathlib import Path
from typing import Any

from qpq_client import Client, _receive

POINTS = ("processed", "writing", "persisted")


def stop_here(point: str) -> None:
    print(f"at {point}", flush=True)
    sys.stdin.readline()  # blocks the whole process until it is killed
    raise SystemExit("released: the test should have killed this process")


async def main(home: Path, point: str, nth: int) -> None:
    client = Client.open(home, os.environ["FAULT_PASSPHRASE"])
    await client.connect()
    real_commit = _receive._commit
    seen = 0

    async def commit(session: Any, *args: Any, **kwargs: Any) -> None:
        nonlocal seen
        seen += 1
        if seen != nth:
            await real_commit(session, *args, **kwargs)
            return
        if point == "processed":
            stop_here(point)
        if point == "writing":
            real_persist = session.persist

            def persist(write: Any) -> Any:
                def write_then_stop(tx: Any) -> Any:
                    result = write(tx)
                    stop_here(point)
                    return result

                return real_persist(write_then_stop)

            session.persist = persist
        await real_commit(session, *args, **kwargs)
        stop_here(point)

    _receive._commit = commit
    await client.receive(wait=30)
    print("done", flush=True)


if __name__ == "__main__":
    home_arg, point_arg = sys.argv[1], sys.argv[2]
    if point_arg not in POINTS:
        raise SystemExit(f"unknown point {point_arg!r}; one of {', '.join(POINTS)}")
    asyncio.run(main(Path(home_arg), point_arg, int(sys.argv[3]) if len(sys.argv) > 3 else 1))
