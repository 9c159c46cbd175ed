"""Names users give things (datasets, checkpoints, class names): printable text only.

Control characters (NUL above all, which Postgres text refuses) have no place in a name;
`PrintableText` refuses them with the field's name.
"""

from __future__ import annotations

import unicodedata
from typing import Annotated

from pydantic import AfterValidator


def has_control_chars(text: str) -> bool:
    return any(unicodedata.category(ch) == "Cc" for ch in text)


def _printable(value: str) -> str:
    if has_control_chars(value):
        raise ValueError("must not contain control characters")
    return value


PrintableText = Annotated[str, AfterValidator(_printable)]


def display_name(filename: str | None) -> str | None:
    """An uploaded file's own name, without any folders a client put in front of it and
    without control characters: the default name of what it uploads."""
    if not filename:
        return None
    base = filename.replace("\\", "/").rsplit("/", 1)[-1].strip()
    base = "".join(ch for ch in base if unicodedata.category(ch) != "Cc")
    return base[:200] or None
