"""`python -m graft` is the same as the `graft` command."""

from graft.cli.main import run

if __name__ == "__main__":
    run()
