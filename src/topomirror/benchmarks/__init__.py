"""Benchmarks: commands that print and save JSON (`topomirror bench ...`)."""
