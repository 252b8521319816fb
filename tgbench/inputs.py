"""Files a suite reads as data, addressed by content: a method parameter that names a file (or a folder of files)
is declared :data:`DataPath`; the suite loader resolves it against the suite file (like ``include:``), and the
cell's identity (``tgbench.identity.cell_hash``) holds a SHA-256 digest of the bytes instead of the path. So
replacing a lesson file's bytes re-keys its cells (they run again), while moving the file or the checkout does not.

A method or proxy that comes from a ``--methods-dir`` plug-in file is code the suite reads as data in the same
sense: its file's digest is part of the identity too (:func:`plugin_digest`).

A low module: pydantic, the standard library and the errors; the method and proxy registries are imported where
they are asked (:func:`arm_inputs`, :func:`proxy_plugin_input`), so that ``tgbench.identity`` reads them through
here.
"""
from __future__ import annotations

import hashlib
import os
import typing
from pathlib import Path
from typing import Annotated, Any

from pydantic import BaseModel

from tgbench.errors import BadInput

# the most files a data folder may hold (a folder picked by mistake, e.g. a home directory, is refused)
MAX_FOLDER_FILES = 1000


class DataFile:
    """Marker in a parameter's annotation: its value is the path of a file or folder the method reads as data."""

    def __repr__(self) -> str:
        return "DataFile()"


DataPath = Annotated[str, DataFile()]   # e.g. ``path: DataPath`` in a method's Params


def data_path_fields(params_model: type[BaseModel]) -> list[str]:
    """The fields of a Params model declared :data:`DataPath`."""
    return [name for name, field in params_model.model_fields.items()
            if any(isinstance(m, DataFile) for m in field.metadata)
            or any(isinstance(m, DataFile) for m in typing.get_args(field.annotation)[1:])]


def resolve_against(value: Any, base: Path) -> Any:
    """A relative data path made absolute against the folder ``base`` (the suite file's); ``~`` is expanded; an
    absolute path, or a value that is no string (validation reports it), is returned as it is."""
    if not isinstance(value, str) or not value:
        return value
    path = Path(value).expanduser()
    return str(path if path.is_absolute() else (base / path).resolve())


_CACHE: dict[tuple, str] = {}   # (path, size, mtime_ns, inode) -> digest: a suite's files are hashed once per run


def file_digest(path: str | Path) -> str:
    """``sha256:<hex>`` of a regular file's bytes; of a folder, of its regular files' names and digests (sorted:
    a DD-Ranking or DC-BENCH folder of ``images.pt`` / ``labels.pt`` ...). ``FileNotFoundError`` for a missing
    path; ``ValueError`` for anything else that cannot be a data input."""
    path = Path(path).expanduser()
    status = path.stat()
    key = (str(path.resolve()), status.st_size, status.st_mtime_ns, status.st_ino)
    if key in _CACHE:
        return _CACHE[key]
    if path.is_dir():
        files = sorted(p for p in path.iterdir() if p.is_file())
        if len(files) > MAX_FOLDER_FILES:
            raise ValueError(f"{path}: more than {MAX_FOLDER_FILES} files in a data folder")
        digest = hashlib.sha256()
        for file in files:
            digest.update(f"{file.name}\0{file_digest(file)}\n".encode())
        _CACHE[key] = result = f"sha256:{digest.hexdigest()}"
        return result
    if not path.is_file():
        raise ValueError(f"{path}: not a regular file or folder")
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    _CACHE[key] = result = f"sha256:{digest.hexdigest()}"
    return result


def data_inputs(params: dict, params_model: type[BaseModel]) -> dict[str, dict]:
    """``{"params.<field>": {"path": ..., "sha256": ...}}`` for every DataPath parameter set in ``params``."""
    out = {}
    for name in data_path_fields(params_model):
        value = params.get(name)
        if isinstance(value, str) and value:
            out[f"params.{name}"] = {"path": value, "sha256": file_digest(value)}
    return out


def plugin_digest(origin: str) -> dict | None:
    """``{"file": name, "sha256": ...}`` of the plug-in file a registry entry came from (``Registry.origin``:
    ``"plugin file <path>"``); None for built-ins and installed entry points (versioned with their package)."""
    prefix = "plugin file "
    if not origin.startswith(prefix):
        return None
    path = origin.removeprefix(prefix)
    return {"file": os.path.basename(path), "sha256": file_digest(path)}


def arm_inputs(method: str, params: dict, arm: str) -> dict[str, dict]:
    """The files an arm (``method`` with ``params``, named ``arm`` in messages) reads as data, by content:
    ``{"params.<field>": {"path", "sha256"}}`` for each :data:`DataPath` parameter of its method, and
    ``{"plugin": {"file", "sha256"}}`` when the method comes from a ``--methods-dir`` plug-in file; {} for a
    built-in method without data files."""
    from tgbench.registry import methods

    cls = methods.get(method)
    try:
        found = data_inputs(params, cls.Params)
        plugin = plugin_digest(methods.origin(method))
    except (OSError, ValueError) as exc:
        raise BadInput(f"sources ({arm}): params: cannot read a data file: {exc}") from None
    return {**found, **({"plugin": plugin} if plugin else {})}


def proxy_plugin_input(proxy: str) -> dict | None:
    """``{"file", "sha256"}`` of the plug-in file a NAS proxy comes from; None for a built-in or installed one."""
    from tgbench.registry import proxies

    return plugin_digest(proxies.origin(proxy))
