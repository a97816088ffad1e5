"""Artifact stores: where stage outputs live (local paths, file://, s3://)."""

from kubeslim.store.base import ArtifactStore, open_store

__all__ = ["ArtifactStore", "open_store"]
