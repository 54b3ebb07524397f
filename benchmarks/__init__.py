"""Benchmark suite for shmsave: every way of saving a stack of images, timed side by side.

Run ``python -m benchmarks --help``; see ``benchmarks/README.md`` for what each method is.
"""
