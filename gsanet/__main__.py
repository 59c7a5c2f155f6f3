"""``python -m gsanet``: the ``gsanet`` command line (:mod:`gsanet.cli`)."""

import sys

from .cli import main

if __name__ == "__main__":
    sys.exit(main())
