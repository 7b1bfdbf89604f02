"""`python -m graft` is the same as the `graft` command."""

import sys

from graft.cli.main import main

if __name__ == "__main__":
    sys.exit(main())
