"""The package version, from the installed package's metadata (pyproject.toml)."""

from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("regprim")
except PackageNotFoundError:  # running from a source tree that was never installed
    __version__ = "0+unknown"
