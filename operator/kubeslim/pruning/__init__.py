"""Structured filter pruning: graph (what is coupled), importance (what matters),
policy (how much, where), masks (soft zeroing, then physical removal)."""
