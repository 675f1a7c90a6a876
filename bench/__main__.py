"""``python -m bench``: run shoal's benchmarks and print the table."""

from bench.run import main

raise SystemExit(main())
