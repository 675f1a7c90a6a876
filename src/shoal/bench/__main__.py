"""``python -m shoal.bench``: the same as ``shoal bench``."""

from shoal.bench.run import main

raise SystemExit(main())
