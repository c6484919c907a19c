"""``python -m bench [--quick]``: run the benchmark suite, print one table, write bench/results.json."""

from bench.suite import main

if __name__ == "__main__":
    main()
