"""The jaxrnn version, in one place (the package root, checkpoints and export read it)."""

__version__ = "0.1.0"
