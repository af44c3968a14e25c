"""``python -m astra``: the command line (:mod:`astra_cli`)."""
import sys

from astra_cli import main

if __name__ == "__main__":
    sys.exit(main())
