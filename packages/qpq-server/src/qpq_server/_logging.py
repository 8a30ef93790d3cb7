"""Structured logging, text or JSON, that never carries secrets.

What may be logged: call names, error codes, counts, sizes, addresses, and
identity keys as a short hex prefix (:func:`short_key`). What never is:
tokens, db keys, private keys, payloads, KeyPackages, full identity keys.
Extra fields are passed as ``logger.info("msg", extra={"fields": {...}})``.
"""

from __future__ import annotations

import datetime
import json
import logging
import sys
from typing import Any, TextIO

__all__ = ["LOGGER_NAME", "configure_logging", "get_logger", "short_key"]

LOGGER_NAME = "qpq_server"
_SHORT_KEY_BYTES = 4


def short_key(key: bytes) -> str:
    """A short, non-identifying-at-scale hex prefix of an identity key for logs."""
    return key[:_SHORT_KEY_BYTES].hex() + "…"


def get_logger(name: str = "") -> logging.Logger:
    """The server's logger (or a child of it)."""
    return logging.getLogger(f"{LOGGER_NAME}.{name}" if name else LOGGER_NAME)


def _fields(record: logging.LogRecord) -> dict[str, Any]:
    fields = getattr(record, "fields", None)
    return dict(fields) if isinstance(fields, dict) else {}


class _TextFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        stamp = datetime.datetime.fromtimestamp(record.created, datetime.UTC)
        extra = " ".join(f"{key}={value}" for key, value in _fields(record).items())
        line = f"{stamp:%Y-%m-%dT%H:%M:%S}Z {record.levelname:<7} {record.getMessage()}"
        if extra:
            line = f"{line} {extra}"
        if record.exc_info and record.exc_info[0] is not None:
            # Exception type and location only: an exception message may quote data.
            line = f"{line} error={record.exc_info[0].__name__}"
            line += f" at={_origin(record.exc_info[2])}"
        return line


class _JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        stamp = datetime.datetime.fromtimestamp(record.created, datetime.UTC)
        entry: dict[str, Any] = {
            "ts": stamp.isoformat(timespec="milliseconds").replace("+00:00", "Z"),
            "level": record.levelname.lower(),
            "logger": record.name,
            "msg": record.getMessage(),
        }
        entry.update(_fields(record))
        if record.exc_info and record.exc_info[0] is not None:
            entry["error"] = record.exc_info[0].__name__
            entry["at"] = _origin(record.exc_info[2])
        return json.dumps(entry, default=str, ensure_ascii=False)


def _origin(tb: Any) -> str:
    # The innermost frame: enough to find the bug, without locals or messages.
    while tb is not None and tb.tb_next is not None:
        tb = tb.tb_next
    if tb is None:
        return "?"
    code = tb.tb_frame.f_code
    return f"{code.co_filename.rsplit('/', 1)[-1]}:{tb.tb_lineno}:{code.co_name}"


def configure_logging(log_format: str, level: str, stream: TextIO | None = None) -> None:
    """Send the server's logs to ``stream`` (stderr) in ``log_format``."""
    handler = logging.StreamHandler(stream or sys.stderr)
    handler.setFormatter(_JsonFormatter() if log_format == "json" else _TextFormatter())
    root = logging.getLogger(LOGGER_NAME)
    root.handlers[:] = [handler]
    root.setLevel(level)
    root.propagate = False
    # aioquic logs per-connection details at INFO; keep only its warnings.
    logging.getLogger("quic").setLevel(logging.WARNING)
