"""ETA1 benchmark suite: ``python -m bench.run`` (or ``make bench``) rewrites bench/RESULTS.md."""
