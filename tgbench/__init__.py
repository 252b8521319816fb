"""tgbench: a benchmark harness for teaching-data methods (real data, dataset distillation, GTN, yours)."""
from importlib import metadata

# The one place the version is written: pyproject.toml reads it (tool.setuptools.dynamic) when a wheel is built.
SOURCE_VERSION = "0.1.0"


def installed_version() -> str:
    """The installed distribution's version (what ``pip`` installed), or this source tree's when tgbench runs
    from a checkout that was never installed (e.g. only on ``PYTHONPATH``)."""
    try:
        return metadata.version("tgbench")
    except metadata.PackageNotFoundError:
        return SOURCE_VERSION


__version__ = installed_version()
