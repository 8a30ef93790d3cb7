"""The version is defined once: the installed metadata and the module agree."""

from __future__ import annotations

import importlib.metadata

import qpq_server


def test_installed_version_is_the_module_version() -> None:
    assert importlib.metadata.version("qpq-server") == qpq_server.__version__
