"""Training, inference and measurement machinery (imports models; never imported by them)."""

from medseg.engine.benchmark import (
    PEERS,
    BenchmarkJob,
    BenchmarkResult,
    benchmark_model,
    benchmark_models,
    count_macs,
    format_table,
    measure_peak_memory,
)

__all__ = ["PEERS", "BenchmarkJob", "BenchmarkResult", "benchmark_model", "benchmark_models", "count_macs",
           "format_table", "measure_peak_memory"]
