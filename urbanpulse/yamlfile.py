"""Strict YAML files validated by a pydantic model, with every error reported at file:line.

Our own configuration files (city, scenarios, dataset mappings, rules) are strict: an unknown
key or a bad value is an error, and a person fixing the file wants all of them at once, each
with the line it is on.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TypeVar

import yaml
from pydantic import BaseModel, ValidationError

from urbanpulse.errors import ContractError

M = TypeVar("M", bound=BaseModel)


def _line(root: yaml.Node | None, loc: Sequence[int | str]) -> int | None:
    """The line (1-based) of the deepest node of `loc` found in the YAML tree.

    Parts that are not in the document (a union's tag that pydantic adds to the location)
    are skipped."""
    node = root
    if node is None:
        return None
    for part in loc:
        if isinstance(node, yaml.MappingNode):
            for key, value in node.value:
                if isinstance(key, yaml.ScalarNode) and key.value == str(part):
                    node = value
                    break
        elif (
            isinstance(node, yaml.SequenceNode)
            and isinstance(part, int)
            and 0 <= part < len(node.value)
        ):
            node = node.value[part]
    return int(node.start_mark.line) + 1


def load_yaml_model(model: type[M], text: str, where: str, what: str) -> M:
    """Parse `text` (from `where`) and validate it as `model`; ContractError lists every problem."""
    try:
        data = yaml.safe_load(text)
        root = yaml.compose(text, Loader=yaml.SafeLoader)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        at = f":{mark.line + 1}" if mark is not None else ""
        problem = getattr(exc, "problem", None) or str(exc)
        raise ContractError(f"{where}{at}: not valid YAML: {problem}") from exc
    try:
        return model.model_validate(data)
    except ValidationError as exc:
        lines = []
        for err in exc.errors():
            line = _line(root, err["loc"])
            place = ".".join(str(p) for p in err["loc"]) or "top level"
            lines.append(f"{where}{f':{line}' if line else ''}: {place}: {err['msg']}")
        raise ContractError(f"invalid {what}:\n  " + "\n  ".join(lines)) from exc
