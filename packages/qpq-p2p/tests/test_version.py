"""The version is defined once: the installed distribution reports the module's."""

from __future__ import annotations

from importlib.metadata import version

import qpq_p2p


def test_distribution_version_is_the_module_version() -> None:
    assert version("qpq-p2p") == qpq_p2p.__version__
