"""`python -m edgeqwen` = the `edgeqwen` command."""

import sys

from .cli import main

sys.exit(main())
