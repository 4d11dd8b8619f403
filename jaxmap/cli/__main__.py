"""``python -m jaxmap.cli``: the same as the ``jaxmap`` console script."""

import sys

from . import main

sys.exit(main())
