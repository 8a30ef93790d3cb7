"""The version is defined once: the installed metadata and the module agree."""

from __future__ import annotations

import importlib.metadata

import qpq_proto


def test_installed_version_is_the_module_version() -> None:
    assert importlib.metadata.version("qpq-proto") == qpq_proto.__version__
