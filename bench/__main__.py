"""``python -m bench ARGS`` from a checkout: ``shoal bench ARGS`` on this checkout's ``src``."""

import sys
from pathlib import Path

# Measure the checkout this shim sits in, not whichever shoal is installed.
sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "src"))

from shoal.bench.run import main

raise SystemExit(main())
