"""The environment variables the CLI reads (and nothing below it): names only.

Kept apart from :mod:`qpq_client._config` so that the ``qpq`` command can
read them without importing the library (a call through ``qpq daemon``).
"""

from __future__ import annotations

__all__ = [
    "ENV_CA_CERT",
    "ENV_HOME",
    "ENV_INVITE",
    "ENV_PIN",
    "ENV_SERVER",
    "ENV_STATE_KEY",
    "ENV_TOKEN",
]

ENV_HOME = "QPQ_HOME"
ENV_SERVER = "QPQ_SERVER"
ENV_CA_CERT = "QPQ_CA_CERT"
ENV_PIN = "QPQ_PIN"
ENV_TOKEN = "QPQ_TOKEN"  # noqa: S105 - a variable name, not a secret
ENV_STATE_KEY = "QPQ_STATE_KEY"
ENV_INVITE = "QPQ_INVITE"
