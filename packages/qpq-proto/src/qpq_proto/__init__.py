"""qpq wire protocol (filled in below)."""

from qpq_proto.errors import ErrorCode, QpqError

__all__ = ["ErrorCode", "QpqError"]
