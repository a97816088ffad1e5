"""The search report: one self-contained HTML page rendered from result data (no I/O)."""
