"""Benchmarks behind ``mamtra bench``: results as JSON, plots as PNG, summaries for docs/BENCHMARKS.md."""
