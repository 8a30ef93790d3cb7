"""qpq beside a Matrix homeserver (Synapse + matrix-nio) on the same workload.

Run through tox, which installs the references in the ``bench`` env only::

    tox -e bench                       # everything; writes bench/REPORT.md and bench/latency.png
    tox -e bench -- --quick            # small counts, a smoke run
    tox -e bench -- --quick --only pair --only group

``run`` is the entry point; every other module is private to it.
"""

__all__: list[str] = []
