"""``python -m histofast.cli``: the ``histofast`` command."""
import sys

from . import main

sys.exit(main())
