"""``python -m qpq_server`` is ``qpq-server``."""

import sys

from qpq_server._cli import main

sys.exit(main())
