"""The package version, on the ground floor so any module can stamp files with it."""

__version__ = "0.1.0"
