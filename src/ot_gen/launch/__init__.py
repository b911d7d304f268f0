"""Hydra callbacks around jobs: run-dir claims, search-space checks, sweep summaries."""
