"""Benchmarks of the broker against OpenBao on this machine: `make bench` (= `python -m bench`)."""
