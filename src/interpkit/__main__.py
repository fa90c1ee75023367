"""``python -m interpkit`` is the ``interpkit`` command."""

import sys

from interpkit.cli import main

sys.exit(main())
