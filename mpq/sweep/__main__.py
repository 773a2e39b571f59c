"""`python -m mpq.sweep [options]`: the same as `mpq sweep`."""

import sys

from mpq.sweep.cli import main

if __name__ == "__main__":
    sys.exit(main())
