"""The installed version of hubtools, read from the package metadata in this one place.

Example:
    >>> from hubtools.version import __version__
    >>> __version__ == "0.0.0+unknown" or __version__[0].isdigit()
    True
"""

from __future__ import annotations

from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("hubtools")
except PackageNotFoundError:  # running from a source tree that was never installed
    __version__ = "0.0.0+unknown"
