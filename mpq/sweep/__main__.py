"""`python -m mpq.sweep [options]`: the same as `mpq sweep`."""

import sys

from mpq.sweep.cli import main

sys.exit(main())
