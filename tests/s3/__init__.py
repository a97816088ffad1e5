"""The S3 test rig: a real radosgw on loopback (see plugin.py)."""
