"""Benchmarks of cinderseg (``make bench``); never run by ``make test``."""
