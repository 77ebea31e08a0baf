"""The package version: a leaf module, so any part can record it without importing the package root."""
__version__ = "0.1.0"
