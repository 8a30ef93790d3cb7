"""Run one peer node on 127.0.0.1 in its own process, for tests that measure it.

Prints the listener's port on one line once it listens, then runs until its
standard input closes. Its identity is fresh and it is in no group, so no
one can prove a member's identity to it.
"""

from __future__ import annotations

import asyncio
import sys

from qpq_core import Identity, MlsClient
from qpq_p2p import DirectMessage, PeerConfig, PeerNode


async def main() -> None:
    identity = Identity.generate()

    async def receive(_message: DirectMessage) -> None:
        raise AssertionError("nothing can be delivered to a node in no group")

    # Long enough for the measurement; the deadline has its own test.
    config = PeerConfig(listen_host="127.0.0.1", authenticate_timeout_seconds=120)
    async with PeerNode(identity, MlsClient(identity), receive, config) as node:
        print(node.port, flush=True)
        await asyncio.get_running_loop().run_in_executor(None, sys.stdin.read)


if __name__ == "__main__":
    asyncio.run(main())
