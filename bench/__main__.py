"""``python -m bench [--quick]``: run the benchmarks, print a table, write bench/results.json."""

from bench.gis_memory import main

if __name__ == "__main__":
    main()
