"""The package version, in one place: ``histofast.__version__``, ``build_info()``, checkpoints, pyproject.toml."""
__version__ = "0.1.0"
