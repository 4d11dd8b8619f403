"""``python -m jaxmap``: the ``jaxmap`` command."""

import sys

from .cli import main

sys.exit(main())
