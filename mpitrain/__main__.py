"""``python -m mpitrain``: the same as the ``mpitrain`` command."""

from mpitrain.cli import program

if __name__ == "__main__":
    raise SystemExit(program())
