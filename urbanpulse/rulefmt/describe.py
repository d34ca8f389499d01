"""A rule as people read it in messages, the API and the console."""

from __future__ import annotations

from typing import Any


def clause_text(rule: Any) -> str:
    """The plan clause a rule implements, with its national standard, e.g. '一、(三)；CJJ 92'."""
    if rule is None:
        return ""
    std = rule.implements.standard
    return f"{rule.implements.clause}{f'；{std}' if std else ''}"


def condition_text(rule: Any) -> str:
    """A rule's threshold as people read it, e.g. '> 10 (clears at 8)'."""
    cond = getattr(rule, "condition", None)
    if cond is None:
        return {"no_data": "no data", "stuck": "flat line"}.get(getattr(rule, "type", ""), "-")
    clear = "" if cond.clear is None else f"（{cond.clear:g} 恢复 / clears at {cond.clear:g}）"
    return f"{cond.op} {cond.value:g}{clear}"
