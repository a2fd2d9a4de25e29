"""Benchmarks: ``python -m bench.placement`` (decision throughput) and ``python -m bench.packing`` (quality)."""
