"""Loads ``qpq.capnp`` once, explicitly (no import hook)."""

from __future__ import annotations

import functools
from importlib import resources
from typing import Any

import capnp

__all__ = ["schema"]


@functools.cache
def schema() -> Any:
    """Return the loaded schema module (``.Request``, ``.Response``, ...)."""
    capnp.remove_import_hook()
    path = resources.files("qpq_proto") / "schema" / "qpq.capnp"
    with resources.as_file(path) as real_path:
        return capnp.load(str(real_path))
