"""The version, in one place: pyproject.toml reads it (setuptools' attr:), and so do
snapshot.__version__ and snapshot-du --version."""
__version__ = "0.1.0"
