"""`python -m embedfm` is the `embedfm` command (also what torchrun launches)."""

from embedfm.cli import main

if __name__ == "__main__":
    raise SystemExit(main())
