"""`tox -e bench-core`: MLS operations through Python vs native Rust, and
the delivery service's side.

For each group size: add one member (commit + Welcome), process that commit
at another member, join from the Welcome, and per-message encrypt and
decrypt, in microseconds. The native numbers come from the crate's
`native_bench` example (the same engine without Python), run in the same
invocation; the ratio is Python / native.

Then, for the delivery service (`DeliveryGroup`, sizes 2/100/1000 unless
given): load the group from its rows, and verify-and-apply an add commit
(with its GroupInfo) and an update commit, in microseconds, with the size of
the change set the verification returns.

Then the two ciphersuites side by side (sizes 2/10/100 unless given), through
Python: the KeyPackage's size, add one member (commit + Welcome + GroupInfo),
a self-update commit, process that commit at another member, and
per-message encrypt and decrypt, for the default suite (0x0001) and X-Wing
(0x004D, post-quantum key agreement).

    python packages/qpq-core/bench/bench_mls.py [sizes...] [--no-native] [--no-delivery]
        [--no-suites] [--only-suites]
"""

from __future__ import annotations

import json
import statistics
import subprocess
import sys
import time
from pathlib import Path

from qpq_core import (
    ApplicationMessage,
    ChangeSet,
    CommitApplied,
    CommitVerified,
    DeliveryGroup,
    Identity,
    MlsClient,
    Suite,
    apply_changes,
)

CRATE = Path(__file__).resolve().parent.parent / "Cargo.toml"
WARMUP = 50
OPS = ("add", "process_commit", "join", "encrypt", "decrypt")


def _key_package(client: MlsClient) -> bytes:
    return client.create_key_packages(1, lifetime_seconds=3600).packages[0]


def _us(start: float) -> float:
    return (time.perf_counter() - start) * 1e6


def bench(size: int, reps: int, messages: int) -> dict[str, float]:
    creator = MlsClient(Identity.generate())
    observer = MlsClient(Identity.generate())
    group_id = creator.create_group().group_id
    packages = [_key_package(observer)]
    packages += [_key_package(MlsClient(Identity.generate())) for _ in range(2, size)]
    start = time.perf_counter()
    bundle = creator.add_members(group_id, packages)
    creator.merge_pending_commit(group_id)
    build = _us(start)
    assert bundle.welcome is not None
    observer.join_from_welcome(bundle.welcome)

    add: list[float] = []
    process: list[float] = []
    join: list[float] = []
    for _ in range(reps):
        newcomer = MlsClient(Identity.generate())
        package = _key_package(newcomer)
        start = time.perf_counter()
        one = creator.add_members(group_id, [package])
        add.append(_us(start))
        creator.merge_pending_commit(group_id)
        start = time.perf_counter()
        applied = observer.process(one.commit)
        process.append(_us(start))
        if not isinstance(applied, CommitApplied) or one.welcome is None:
            raise TypeError("the commit was not applied")
        start = time.perf_counter()
        newcomer.join_from_welcome(one.welcome)
        join.append(_us(start))

    for _ in range(WARMUP):  # caches and allocator, as the native side does
        observer.process(creator.encrypt(group_id, b"warm-up").message)
    texts = [
        f"message {i} of the benchmark, about a line of chat".encode() for i in range(messages)
    ]
    start = time.perf_counter()
    ciphertexts = [creator.encrypt(group_id, text).message for text in texts]
    encrypt = _us(start) / messages
    start = time.perf_counter()
    for ciphertext in ciphertexts:
        if not isinstance(observer.process(ciphertext), ApplicationMessage):
            raise TypeError("not decrypted")
    decrypt = _us(start) / messages
    return {
        "size": size,
        "build": build,
        "add": statistics.median(add),
        "process_commit": statistics.median(process),
        "join": statistics.median(join),
        "encrypt": encrypt,
        "decrypt": decrypt,
    }


def _kib(changes: ChangeSet) -> float:
    return sum(len(k) + len(v or b"") for k, v in changes) / 1024


def bench_delivery(size: int, reps: int) -> dict[str, float]:
    creator = MlsClient(Identity.generate())
    updater = MlsClient(Identity.generate())
    created = creator.create_group()
    group_id = created.group_id
    server, registered = DeliveryGroup.create(created.group_info)
    rows: dict[bytes, bytes] = {}
    apply_changes(rows, registered.changes)
    packages = [_key_package(updater)]
    packages += [_key_package(MlsClient(Identity.generate())) for _ in range(2, size)]
    bundle = creator.add_members(group_id, packages)
    apply_changes(rows, server.verify(bundle.commit, bundle.group_info).changes)
    creator.merge_pending_commit(group_id)
    assert bundle.welcome is not None
    updater.join_from_welcome(bundle.welcome)

    def verify(committer: MlsClient, commit: bytes, group_info: bytes) -> tuple[float, float]:
        start = time.perf_counter()
        verified = server.verify(commit, group_info)
        elapsed = _us(start)
        if not isinstance(verified, CommitVerified):
            raise TypeError("not a commit")
        apply_changes(rows, verified.changes)
        committer.merge_pending_commit(group_id)
        return elapsed, _kib(verified.changes)

    load: list[float] = []
    add: list[float] = []
    update: list[float] = []
    add_kib = update_kib = 0.0
    for _ in range(reps):
        stored = list(rows.items())
        start = time.perf_counter()
        server = DeliveryGroup.load(group_id, stored)
        load.append(_us(start))
        one = creator.add_members(group_id, [_key_package(MlsClient(Identity.generate()))])
        updater.process(one.commit)
        elapsed, add_kib = verify(creator, one.commit, one.group_info)
        add.append(elapsed)
        renewal = updater.self_update(group_id)
        creator.process(renewal.commit)
        elapsed, update_kib = verify(updater, renewal.commit, renewal.group_info)
        update.append(elapsed)
    return {
        "load": statistics.median(load),
        "verify_add": statistics.median(add),
        "verify_update": statistics.median(update),
        "add_kib": add_kib,
        "update_kib": update_kib,
    }


def bench_suite(suite: Suite, size: int, reps: int, messages: int) -> dict[str, float]:
    """One suite at one group size: KeyPackage bytes, then µs per operation."""

    def key_package(client: MlsClient) -> bytes:
        return client.create_key_packages(1, lifetime_seconds=3600, suite=suite).packages[0]

    creator = MlsClient(Identity.generate())
    observer = MlsClient(Identity.generate())
    group_id = creator.create_group(suite=suite).group_id
    packages = [key_package(observer)]
    packages += [key_package(MlsClient(Identity.generate())) for _ in range(2, size)]
    bundle = creator.add_members(group_id, packages)
    creator.merge_pending_commit(group_id)
    assert bundle.welcome is not None
    observer.join_from_welcome(bundle.welcome)
    add: list[float] = []
    commit: list[float] = []
    process: list[float] = []
    package_bytes = 0
    for _ in range(reps):
        package = key_package(MlsClient(Identity.generate()))
        package_bytes = len(package)
        start = time.perf_counter()
        creator.add_members(group_id, [package])
        add.append(_us(start))
        creator.clear_pending_commit(group_id)
        start = time.perf_counter()
        update = creator.self_update(group_id)
        commit.append(_us(start))
        creator.merge_pending_commit(group_id)
        start = time.perf_counter()
        if not isinstance(observer.process(update.commit), CommitApplied):
            raise TypeError("the commit was not applied")
        process.append(_us(start))
    for _ in range(WARMUP):
        observer.process(creator.encrypt(group_id, b"warm-up").message)
    texts = [f"message {i}, about a line of chat".encode() for i in range(messages)]
    start = time.perf_counter()
    ciphertexts = [creator.encrypt(group_id, text).message for text in texts]
    encrypt = _us(start) / messages
    start = time.perf_counter()
    for ciphertext in ciphertexts:
        if not isinstance(observer.process(ciphertext), ApplicationMessage):
            raise TypeError("not decrypted")
    decrypt = _us(start) / messages
    return {
        "key_package_bytes": package_bytes,
        "add": statistics.median(add),
        "commit": statistics.median(commit),
        "process": statistics.median(process),
        "encrypt": encrypt,
        "decrypt": decrypt,
    }


def print_suites(sizes: list[int]) -> None:
    print(
        f"{'size':>5} {'suite':<8} {'KeyPackage B':>13} {'add µs':>9} {'commit µs':>10} "
        f"{'process µs':>11} {'encrypt µs':>11} {'decrypt µs':>11}"
    )
    for size in sizes:
        for suite in Suite:
            row = bench_suite(suite, size, 3 if size >= 1000 else 7, 200)
            print(
                f"{size:>5} {suite.label:<8} {row['key_package_bytes']:13.0f} {row['add']:9.0f} "
                f"{row['commit']:10.0f} {row['process']:11.0f} {row['encrypt']:11.1f} "
                f"{row['decrypt']:11.1f}"
            )
            sys.stdout.flush()


def native(sizes: list[int]) -> dict[int, dict[str, float]]:
    command = [
        "cargo", "run", "--quiet", "--release", "--locked", "--no-default-features",
        "--example", "native_bench", "--manifest-path", str(CRATE), "--",
        *map(str, sizes),
    ]  # fmt: skip
    out = subprocess.run(command, check=True, capture_output=True, text=True).stdout  # noqa: S603
    rows = [json.loads(line) for line in out.splitlines() if line.startswith("{")]
    return {int(row["size"]): row for row in rows}


def main(argv: list[str]) -> int:
    given = [int(a) for a in argv if a.isdigit()]
    if "--only-suites" in argv:
        print_suites(given or [2, 10, 100])
        return 0
    sizes = given or [2, 10, 100, 1000]
    native_rows = {} if "--no-native" in argv else native(sizes)
    print(f"{'size':>5} {'operation':<15} {'python µs':>12} {'native µs':>12} {'ratio':>6}")
    for size in sizes:
        reps, messages = (3, 200) if size >= 1000 else (5, 500)
        py = bench(size, reps, messages)
        nat = native_rows.get(size, {})
        for op in ("build", *OPS):
            label = f"build({size - 1})" if op == "build" else op
            p, n = py[op], nat.get(op)
            ratio = f"{p / n:6.2f}" if n else "     -"
            n_text = f"{n:12.1f}" if n else f"{'-':>12}"
            print(f"{size:>5} {label:<15} {p:12.1f} {n_text} {ratio}")
        sys.stdout.flush()
    if "--no-delivery" not in argv:
        print()
        print(
            f"{'size':>5} {'delivery service':<17} {'load µs':>10} {'verify add µs':>14} "
            f"{'verify update µs':>17} {'add KiB':>8} {'update KiB':>11}"
        )
        for size in given or [2, 100, 1000]:
            row = bench_delivery(size, 3 if size >= 1000 else 5)
            print(
                f"{size:>5} {'':<17} {row['load']:10.0f} {row['verify_add']:14.0f} "
                f"{row['verify_update']:17.0f} {row['add_kib']:8.1f} {row['update_kib']:11.1f}"
            )
            sys.stdout.flush()
    if "--no-suites" not in argv:
        print()
        print_suites(given or [2, 10, 100])
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
