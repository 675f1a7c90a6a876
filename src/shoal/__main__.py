"""``python -m shoal``: the ``shoal`` command (see :mod:`shoal.cli`)."""

from shoal.cli import main

if __name__ == "__main__":
    raise SystemExit(main())
