"""Templates such as `bhm-{SystemCodeNumber|slug}`: text with column references and filters."""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass

_REF = re.compile(r"\{([^{}|]+)((?:\|[a-z]+)*)\}")
_NOT_ID = re.compile(r"[^A-Za-z0-9._-]+")


def sanitise_id(text: str) -> str:
    """The device-id form of a text: runs of other characters become '-', at most 64 long."""
    cleaned = _NOT_ID.sub("-", text.strip())
    cleaned = cleaned.lstrip("._-")  # the id must start with a letter or digit
    return cleaned[:64].rstrip("-")


FILTERS: dict[str, Callable[[str], str]] = {
    "lower": str.lower,
    "upper": str.upper,
    "strip": str.strip,
    "slug": lambda s: sanitise_id(s).lower(),
}


@dataclass(frozen=True, slots=True)
class Template:
    """A parsed template; `render` fills it from one row."""

    text: str
    parts: tuple[str | tuple[str, tuple[str, ...]], ...]
    columns: tuple[str, ...]  # the columns it reads, in order

    def render(self, row: Mapping[str, str]) -> str:
        out: list[str] = []
        for part in self.parts:
            if isinstance(part, str):
                out.append(part)
                continue
            value = row.get(part[0], "")
            for name in part[1]:
                value = FILTERS[name](value)
            out.append(value)
        return "".join(out)


def parse_template(text: str) -> Template:
    """Parse `{column|filter|...}` references; raises ValueError naming an unknown filter."""
    parts: list[str | tuple[str, tuple[str, ...]]] = []
    pos = 0
    for match in _REF.finditer(text):
        if match.start() > pos:
            parts.append(text[pos : match.start()])
        filters = tuple(f for f in match.group(2).split("|") if f)
        unknown = [f for f in filters if f not in FILTERS]
        if unknown:
            raise ValueError(f"unknown filter {unknown[0]!r} (known: {', '.join(FILTERS)})")
        parts.append((match.group(1), filters))
        pos = match.end()
    if pos < len(text):
        parts.append(text[pos:])
    literal = "".join(p for p in parts if isinstance(p, str))
    if "{" in literal or "}" in literal:
        raise ValueError(f"unbalanced braces in template {text!r}")
    return Template(text, tuple(parts), tuple(p[0] for p in parts if isinstance(p, tuple)))
