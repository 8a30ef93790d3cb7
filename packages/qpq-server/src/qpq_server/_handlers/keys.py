"""The KeyPackage directory: upload (validated), last resort, claim, count."""

from __future__ import annotations

import asyncio

from qpq_core import SUITES, KeyPackageInfo
from qpq_proto import (
    DEFAULT_CIPHERSUITE,
    ClaimedKeyPackage,
    CountKeyPackages,
    FetchKeyPackage,
    Fingerprint,
    Fingerprints,
    KeyPackageCount,
    SuiteKeyPackageCount,
    UploadKeyPackages,
    UploadLastResort,
)
from qpq_proto.errors import (
    ForbiddenError,
    InvalidArgumentError,
    InvalidKeyPackageError,
    NotFoundError,
    UnsupportedCiphersuiteError,
)
from qpq_server._accounts import Status
from qpq_server._config import ServerConfig
from qpq_server._context import CallContext
from qpq_server._mls import validate_key_package
from qpq_server._storage import ClaimLimits, StoredKeyPackage

#: Single-use packages one identity may keep on the server.
MAX_STORED_KEY_PACKAGES = 10_000
_U32 = 0xFFFF_FFFF
_HOUR_S = 3600
_DAY_S = 24 * _HOUR_S


def claim_limits(config: ServerConfig) -> ClaimLimits:
    """The configured claim buckets: per target identity, per (claimer, target),
    and per claiming account."""
    return ClaimLimits(
        target_burst=config.key_package_claim_burst,
        target_per_second=config.key_package_claims_per_hour / _HOUR_S,
        pair_burst=config.key_package_claims_per_claimer_per_day,
        pair_per_second=config.key_package_claims_per_claimer_per_day / _DAY_S,
        account_burst=config.key_package_claims_per_account_per_day,
        account_per_second=config.key_package_claims_per_account_per_day / _DAY_S,
    )


def _validate(ctx: CallContext, packages: tuple[bytes, ...], owner: bytes) -> list[KeyPackageInfo]:
    now = ctx.app.clock.wall_ms() // 1000
    facts = []
    for package in packages:
        info = validate_key_package(
            package,
            now=now,
            max_lifetime_seconds=ctx.app.config.key_package_max_lifetime_seconds,
        )
        if info.identity_key != owner:
            raise ForbiddenError(
                "a KeyPackage's credential is not the uploader's identity", field="packages"
            )
        # A device's leaves name the account it registered for (a legacy
        # credential names the key itself, which is then its account).
        if info.account_key != ctx.account():
            raise ForbiddenError(
                "a KeyPackage's credential names another account than the uploader's",
                field="packages",
            )
        facts.append(info)
    return facts


async def upload_key_packages(ctx: CallContext, call: UploadKeyPackages) -> Fingerprints:
    owner = ctx.identity()
    # Refuse a batch that cannot be stored before paying for its validation
    # (the storage call re-checks this inside its transaction).
    stored_count, _ = await ctx.app.storage.count_key_packages(
        owner, ctx.app.clock.wall_ms() // 1000
    )
    if stored_count + len(call.packages) > MAX_STORED_KEY_PACKAGES:
        raise InvalidArgumentError(
            f"at most {MAX_STORED_KEY_PACKAGES} KeyPackages may be stored per identity",
            field="packages",
        )
    # Signature checks of a large batch run off the event loop.
    facts = await asyncio.to_thread(_validate, ctx, call.packages, owner)
    stored = [
        StoredKeyPackage(
            package=package,
            fingerprint=info.fingerprint,
            not_after=info.not_after,
            ciphersuite=info.ciphersuite,
        )
        for package, info in zip(call.packages, facts, strict=True)
    ]
    await ctx.app.storage.add_key_packages(
        owner, stored, MAX_STORED_KEY_PACKAGES, ctx.app.config.quota_key_package_bytes
    )
    return Fingerprints(fingerprints=tuple(info.fingerprint for info in facts))


async def upload_last_resort(ctx: CallContext, call: UploadLastResort) -> Fingerprint:
    owner = ctx.identity()
    (info,) = _validate(ctx, (call.package,), owner)
    if not info.last_resort:
        # Served again and again, a package without the extension breaks
        # every join after the first: its owner deletes the key on first use.
        raise InvalidKeyPackageError(
            "a last-resort KeyPackage must carry the last_resort extension", field="package"
        )
    await ctx.app.storage.set_last_resort(
        owner,
        StoredKeyPackage(
            package=call.package,
            fingerprint=info.fingerprint,
            not_after=info.not_after,
            ciphersuite=info.ciphersuite,
        ),
    )
    return Fingerprint(fingerprint=info.fingerprint)


async def fetch_key_package(ctx: CallContext, call: FetchKeyPackage) -> ClaimedKeyPackage:
    # A claim takes a package its owner can use once: limited per target and
    # per claimer (rateLimited, nothing handed out), so that no one, and no
    # crowd of identities, can take the stock and leave its owner's contacts
    # the last resort (docs/security.md).
    if call.suite not in SUITES:
        raise UnsupportedCiphersuiteError(
            f"ciphersuite 0x{call.suite:04x} is not served", field="ciphersuite"
        )
    now_s = ctx.app.clock.wall_ms() // 1000
    target = await ctx.app.storage.account_of(call.identity_key)
    if target is not None and target.status is Status.SUSPENDED:
        # Members see a suspended account as such: nobody adds it meanwhile.
        raise ForbiddenError("this user's account is suspended", field="identity_key")
    package = await ctx.app.storage.claim_key_package(
        call.identity_key,
        now_s,
        ciphersuite=call.suite,
        claimer=ctx.identity(),
        limits=claim_limits(ctx.app.config),
        account=ctx.account(),
    )
    if package is None:
        # The suite is named: a client tells "no KeyPackage at all" from "none
        # for a group of this suite" (docs/protocol.md, fetchKeyPackage).
        raise NotFoundError(
            f"no KeyPackage of ciphersuite 0x{call.suite:04x} is available for this identity",
            field="identity_key",
        )
    return ClaimedKeyPackage(package=package)


async def count_key_packages(ctx: CallContext, _call: CountKeyPackages) -> KeyPackageCount:
    stock = await ctx.app.storage.key_package_stock(ctx.identity(), ctx.app.clock.wall_ms() // 1000)
    suites = tuple(
        SuiteKeyPackageCount(
            ciphersuite=entry.ciphersuite,
            count=min(entry.count, _U32),
            has_last_resort=entry.has_last_resort,
            last_resort_served=min(entry.last_resort_served, _U32),
        )
        for entry in stock
    )
    # The top-level fields stay the default suite's, as older clients read them.
    default = next(
        (entry for entry in suites if entry.ciphersuite == DEFAULT_CIPHERSUITE),
        SuiteKeyPackageCount(DEFAULT_CIPHERSUITE, 0, False),
    )
    return KeyPackageCount(
        count=default.count,
        has_last_resort=default.has_last_resort,
        last_resort_served=default.last_resort_served,
        suites=suites,
    )
