"""``python -m paramwise`` runs the command line (:mod:`paramwise.cli`)."""

import sys

from .cli import main

sys.exit(main())
