"""The ``qpq`` command: a thin click shell over :mod:`qpq_client`.

Importing :mod:`qpq_client` never imports this package (nor click).
"""

from qpq_client.cli._main import cli, main

__all__ = ["cli", "main"]
