"""The release of this package (one place; ``heliosdb.__version__`` re-exports it)."""

__version__ = "0.1.0"
