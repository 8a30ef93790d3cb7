"""Run the server: open storage, bind QUIC, serve until a signal, shut down cleanly.

Startup refuses (ConfigError/StartupError, exit status 2) before binding
anything when production settings are weak, the certificate is unusable or
the database cannot be unlocked. Shutdown: stop accepting, answer new calls
with Unavailable, end subscriptions and long-polls, let in-flight calls
finish up to ``shutdown_grace_seconds``, close connections with a reason,
then close the database.
"""

from __future__ import annotations

import asyncio
import dataclasses
import json
import os
import signal
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from qpq_proto import format_host_port
from qpq_server._account_watch import AccountWatch
from qpq_server._checks import Problem, Severity, check_config, refusal
from qpq_server._config import REGISTRATION_OPEN, ServerConfig
from qpq_server._context import App, Clock
from qpq_server._data_dir_lock import DataDirLock
from qpq_server._dispatch import Dispatcher
from qpq_server._errors import ConfigError, StartupError
from qpq_server._logging import get_logger
from qpq_server._metrics import Metrics
from qpq_server._notifier import DeliveryNotifier
from qpq_server._sqlcipher import SqlCipherStorage
from qpq_server._storage import DAY_MS, Retention, Storage
from qpq_server._tls import TlsMaterial, generate_self_signed, load_tls
from qpq_server._transport import TransportHub, close_all, start_listener
from qpq_server._version import __version__

__all__ = ["ReadyInfo", "cleanup_round", "open_storage", "prepare_tls", "run_server"]

_log = get_logger()
_METRICS_REFRESH_SECONDS = 15.0


@dataclass(frozen=True, slots=True)
class ReadyInfo:
    """What ``--ready-file`` receives once the server listens."""

    host: str
    port: int
    cert_fingerprint: str
    cert_path: str
    metrics_port: int | None = None


def prepare_tls(config: ServerConfig) -> TlsMaterial:
    """Load the configured certificate; in development, generate one if missing."""
    if config.tls_cert is not None and config.tls_key is not None:
        return load_tls(config.tls_cert, config.tls_key)
    if config.production:
        raise ConfigError("tls_cert", "production never generates a certificate; set QPQ_TLS_CERT")
    if config.cert_path.is_file() and config.key_path.is_file():
        tls = load_tls(config.cert_path, config.key_path)
        _log.warning(
            "DEVELOPMENT certificate in use (self-signed); clients must pin it",
            extra={"fields": {"cert": str(tls.cert_path), "sha256": tls.fingerprint}},
        )
        return tls
    tls = generate_self_signed(config.cert_path, config.key_path)
    _log.warning(
        "GENERATED a self-signed DEVELOPMENT certificate; clients must pin it. "
        "Never use this in production.",
        extra={"fields": {"cert": str(tls.cert_path), "sha256": tls.fingerprint}},
    )
    return tls


def _write_ready_file(path: Path, info: ReadyInfo) -> None:
    # Write then rename: a reader never sees a partial file.
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(json.dumps(dataclasses.asdict(info)))
    os.replace(tmp, path)


def _announce(config: ServerConfig, problems: list[Problem]) -> None:
    for problem in problems:
        if problem.severity is Severity.WARNING:
            _log.warning("INSECURE SETTING: %s", problem)
    mode = "PRODUCTION" if config.production else "DEVELOPMENT"
    _log.info("qpq-server %s starting in %s mode", __version__, mode)
    if not config.production:
        _log.warning("running in DEVELOPMENT mode: set QPQ_PRODUCTION=1 for a real deployment")
    if config.registration_mode == REGISTRATION_OPEN:
        # In production only when set explicitly (registration = open).
        _log.warning(
            "registration is OPEN: anyone who reaches the server may register, at most "
            "%g accounts per source address per hour; set registration = invite to admit "
            "people by invite code (qpq-server invites create)",
            config.registrations_per_address_per_hour,
        )
    else:
        _log.info(
            "registration is by invitation: a new account needs an invite code "
            "(qpq-server invites create)"
        )
    if not config.auth_token:
        _log.info("no access token is set: accounts alone admit clients")


async def cleanup_round(app: App, metrics: Metrics) -> dict[str, int]:
    """One round: expired messages and KeyPackages, then rows nobody uses any more.

    Returns what was removed, by kind; it is logged and counted in
    ``qpq_cleanup_removed_total{kind}``. The storage works in bounded
    batches, so calls keep being served in between.
    """
    now_ms = app.clock.wall_ms()
    messages, packages = await app.storage.expire(now_ms=now_ms, now_s=now_ms // 1000)
    retention = Retention(
        group_idle_ms=app.config.group_retention_days * DAY_MS,
        username_hold_ms=int(app.config.username_cooldown_days * DAY_MS),
    )
    unused = await app.storage.remove_unused(now_ms=now_ms, retention=retention)
    removed = {
        "messages": messages,
        "key_packages": packages,
        "queues": unused.queues,
        "groups": unused.groups,
        "endpoints": unused.endpoints,
        "username_holds": unused.username_holds,
        "rate_limits": unused.rate_limits,
        "account_limits": unused.account_limits,
    }
    metrics.observe_cleanup(removed)
    if any(removed.values()):
        _log.info("cleanup removed", extra={"fields": removed})
    return removed


async def _periodic_cleanup(app: App, metrics: Metrics) -> None:
    interval = app.config.cleanup_interval_seconds
    while True:
        try:
            await cleanup_round(app, metrics)
            metrics.observe_queues(await app.storage.queue_stats())
            counts = await app.storage.account_counts()
            metrics.observe_accounts({status.value: count for status, count in counts.items()})
        except asyncio.CancelledError:
            raise
        except Exception:  # noqa: BLE001 - cleanup retries on the next round
            _log.exception("cleanup failed; will retry")
        await asyncio.sleep(min(interval, _METRICS_REFRESH_SECONDS))


async def open_storage(config: ServerConfig) -> Storage:
    """The configured backend, open and migrated: PostgreSQL at ``database_url``, else
    SQLCipher in ``data_dir``."""
    if config.database_url:
        # Imported only here: psycopg is the optional ``postgres`` extra.
        try:
            from qpq_server._postgres import PostgresStorage  # noqa: PLC0415
        except ImportError as error:
            raise StartupError(
                f"database_url names PostgreSQL but its driver is missing ({error.name}); "
                "install qpq-server[postgres]"
            ) from None
        return await PostgresStorage.open(
            config.database_url,
            pool_size=config.database_pool_size,
            budget_bytes=config.storage_budget_bytes,
        )
    storage = await SqlCipherStorage.open(
        config.database_path, config.db_key, budget_bytes=config.storage_budget_bytes
    )
    if not config.db_key:
        _log.warning("database is NOT encrypted (db_key is empty)")
    return storage


async def run_server(
    config: ServerConfig,
    *,
    ready_file: Path | None = None,
    stop: asyncio.Event | None = None,
    clock: Clock | None = None,
    reload: Callable[[], ServerConfig] | None = None,
) -> None:
    """Serve until ``stop`` is set (or SIGINT/SIGTERM when ``stop`` is None).

    With ``reload``, SIGHUP calls it for a fresh configuration and takes the
    access tokens (``auth_token``, ``auth_token_next``) from it: a token
    rotation needs no restart. Other settings take effect at the next start.

    Raises:
        ConfigError: a refused or invalid setting.
        StartupError: the database, certificate or socket cannot be used.
    """
    problems = check_config(config)
    refused = refusal(problems)
    if refused is not None:
        raise ConfigError(refused.setting, refused.message)
    # One server per SQLCipher data directory, and none during a rekey
    # (qpq-server rekey takes the same lock). PostgreSQL nodes share a database.
    lock = None if config.database_url else DataDirLock.acquire(config.data_dir, purpose="start")
    try:
        await _serve(config, problems, ready_file=ready_file, stop=stop, clock=clock, reload=reload)
    finally:
        if lock is not None:
            lock.release()


async def _serve(
    config: ServerConfig,
    problems: list[Problem],
    *,
    ready_file: Path | None,
    stop: asyncio.Event | None,
    clock: Clock | None,
    reload: Callable[[], ServerConfig] | None,
) -> None:
    _announce(config, problems)
    tls = prepare_tls(config)
    storage = await open_storage(config)
    loop = asyncio.get_running_loop()
    if stop is None:
        stop = asyncio.Event()
        for signum in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(signum, stop.set)
    notifier = DeliveryNotifier()
    try:
        # Before the listener binds: a waiter is never registered before
        # the other nodes' deliveries can reach it.
        await storage.watch_deliveries(notifier)
    except BaseException:
        await storage.close()
        raise
    metrics = Metrics()
    metrics.count_waiters(lambda: notifier.waiting)
    app = App(
        config=config,
        storage=storage,
        notifier=notifier,
        clock=clock or Clock(),
        version=__version__,
        started_at=time.monotonic(),
        metrics=metrics,
    )
    hub = TransportHub(dispatcher=Dispatcher(app, metrics))
    if reload is not None:
        loop.add_signal_handler(signal.SIGHUP, _reload_tokens, reload, hub.dispatcher)
    watch = AccountWatch(storage, hub, notifier, metrics)
    try:
        # Before the listener binds: no status change after this read is missed.
        await watch.start()
        try:
            listener = await start_listener(
                config.listen_host, config.listen_port, tls, hub, config.idle_timeout_seconds
            )
        except OSError as error:
            raise StartupError(
                f"cannot listen on {config.listen}: {error.strerror or error}"
            ) from None
        try:
            metrics_port = _start_metrics(config, metrics)
        except StartupError:
            listener.close()
            raise
        _log.info(
            "listening",
            extra={
                "fields": {
                    "address": format_host_port(listener.host, listener.port),
                    "alpn": "qpq/1",
                    "storage": storage.backend,
                    "cert_sha256": tls.fingerprint,
                }
            },
        )
        if ready_file is not None:
            _write_ready_file(
                ready_file,
                ReadyInfo(
                    host=listener.host,
                    port=listener.port,
                    cert_fingerprint=tls.fingerprint,
                    cert_path=str(tls.cert_path.resolve()),
                    metrics_port=metrics_port,
                ),
            )
        cleanup = asyncio.create_task(_periodic_cleanup(app, metrics))
        watching = asyncio.create_task(watch.run())
        await stop.wait()
        _log.info("shutting down")
        cleanup.cancel()
        watching.cancel()
        await _shutdown(hub, notifier, config.shutdown_grace_seconds)
        listener.close()
        metrics.stop_http()
    finally:
        if reload is not None:
            loop.remove_signal_handler(signal.SIGHUP)
        await storage.close()
    _log.info("stopped cleanly")


_TOKEN_SETTINGS = ("auth_token", "auth_token_next")


def _reload_tokens(reload: Callable[[], ServerConfig], dispatcher: Dispatcher) -> None:
    """SIGHUP: take the access tokens from a fresh configuration, or keep the old ones."""
    try:
        fresh = reload()
    except ConfigError as error:
        _log.error("reload refused, the access tokens are unchanged: %s", error)
        return
    problems = [p for p in check_config(fresh) if p.setting in _TOKEN_SETTINGS]
    refused = refusal(problems)
    if refused is not None:
        _log.error("reload refused, the access tokens are unchanged: %s", refused)
        return
    for problem in problems:
        _log.warning("INSECURE SETTING: %s", problem)
    dispatcher.set_tokens(fresh.auth_token, fresh.auth_token_next)
    # Never the values: only how many are accepted now.
    _log.info(
        "reloaded the access tokens: %d accepted (other settings take a restart)",
        dispatcher.accepted_tokens,
    )


def _start_metrics(config: ServerConfig, metrics: Metrics) -> int | None:
    """Serve ``/metrics`` where configured: the bound port, or None when off."""
    if config.metrics_listen is None:
        return None
    host, port = config.metrics_listen
    try:
        return metrics.start_http(host, port)
    except OSError as error:
        raise StartupError(
            f"cannot serve metrics on {format_host_port(host, port)}: {error.strerror or error}"
        ) from None


async def _shutdown(hub: TransportHub, notifier: DeliveryNotifier, grace: float) -> None:
    hub.accepting = False
    hub.dispatcher.shutting_down = True
    notifier.close()  # long-polls return, subscriptions end with Unavailable
    pending = [task for task in hub.tasks if not task.done()]
    if pending:
        _done, still = await asyncio.wait(pending, timeout=grace)
        for task in still:
            task.cancel()
        if still:
            await asyncio.wait(still, timeout=1.0)
    # transmit() inside hands each CONNECTION_CLOSE to the socket right away.
    close_all(hub, "server shutting down")
