"""References that results keep to artifacts: keys relative to the artifacts root.

Pure string handling, apart from the stores themselves, so the operator (which never
opens a store and has no S3 client in its image) can show artifact URIs in status.
"""

from __future__ import annotations


def is_absolute(ref: str) -> bool:
    """A full URI or an absolute path, as results of older versions recorded."""
    return "://" in ref or ref.startswith("/")


def resolve(root: str, ref: str) -> str:
    """A result's reference (a key relative to the artifacts root) as a full URI
    below the reader's root; full URIs of older results stay as they are."""
    return ref if is_absolute(ref) else f"{root.rstrip('/')}/{ref.lstrip('/')}"
