"""Shared pytest wiring: each rig lives in its own plugin module."""

pytest_plugins = [
    "tests.cluster.plugin",
    "tests.s3.plugin",
]
