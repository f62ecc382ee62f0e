"""sgid_utils: the library behind the SGID reproduction notebooks (one module per pipeline stage)."""

__version__ = "0.1.0"
