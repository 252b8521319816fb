"""One ``ConfigError`` line from a pydantic ``ValidationError``: ``<file>: <key.path>: <what is wrong>``, with a
"did you mean" for an unknown key."""
from __future__ import annotations

import difflib
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ValidationError

from tgbench.suite.schema import Suite


def format_error(path: Path, exc: ValidationError, prefix: str = "", root: type[BaseModel] | None = None) -> str:
    err = exc.errors()[0]
    loc = ".".join(str(p) if not isinstance(p, int) else f"[{p}]" for p in (prefix, *err["loc"]) if p != "")
    loc = loc.replace(".[", "[")
    msg = err["msg"].removeprefix("Value error, ")
    if err["type"] == "extra_forbidden":
        key = str(err["loc"][-1])
        parent = _model_at(err["loc"][:-1], root or Suite)
        close = difflib.get_close_matches(key, list(parent.model_fields), n=1) if parent else []
        msg = f"unknown key{f' (did you mean {close[0]!r}?)' if close else ''}"
    extra = f" (and {len(exc.errors()) - 1} more problem(s))" if len(exc.errors()) > 1 else ""
    return f"{path}: {loc or '<top>'}: {msg}{extra}"


def _model_at(loc: tuple, root: type[BaseModel]) -> type[BaseModel] | None:
    """The pydantic model class at a location path in ``root`` (for 'did you mean' on unknown keys)."""
    model: Any = root
    for part in loc:
        if isinstance(part, int):
            continue
        field = model.model_fields.get(part) if isinstance(model, type) and issubclass(model, BaseModel) else None
        if field is None:
            return None
        annotation = field.annotation
        args = getattr(annotation, "__args__", ())
        candidates = [annotation, *args]
        model = next((c for c in candidates if isinstance(c, type) and issubclass(c, BaseModel)), None)
        if model is None:
            return None
    return model if isinstance(model, type) and issubclass(model, BaseModel) else None
