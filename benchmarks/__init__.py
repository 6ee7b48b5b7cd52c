"""Benchmarks of ofas-wrap (issue 5). Not part of the installed package; run the scripts from the repo root."""
