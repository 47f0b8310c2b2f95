"""Loading a job file with the line of every field, and turning schema errors into messages that
name the file, the line, the field and what was expected. Torch-free: the runner uses it too."""

from __future__ import annotations

import difflib
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml
from pydantic import BaseModel, ValidationError

Loc = tuple[str | int, ...]


class JobFileError(Exception):
    """A job file that cannot be used. ``str()`` is the whole message for the user."""

    def __init__(self, path: str | Path, problems: Sequence[str]):
        self.path = str(path)
        self.problems = list(problems)
        head = f"{self.path}: invalid job file" + (f" ({len(problems)} problems)" if len(problems) > 1 else "")
        super().__init__(head + "\n" + "\n".join(f"  {p}" for p in self.problems))


@dataclass
class LocatedYaml:
    """A parsed YAML document and the 1-based line where each key path starts."""

    path: str
    data: Any
    lines: dict[Loc, int] = field(default_factory=dict)

    def line_of(self, loc: Loc) -> int | None:
        # The deepest prefix of ``loc`` that has a line: a missing field points at its parent.
        for n in range(len(loc), -1, -1):
            if loc[:n] in self.lines:
                return self.lines[loc[:n]]
        return None

    def where(self, loc: Loc) -> str:
        line = self.line_of(loc)
        return f"{self.path}:{line}" if line else self.path


def load_yaml(path: str | Path) -> LocatedYaml:
    """Parse ``path`` keeping line numbers. Duplicate keys are an error (YAML would keep the last)."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise JobFileError(path, ["file not found"]) from None
    except (OSError, UnicodeDecodeError) as e:
        raise JobFileError(path, [f"cannot read the file: {e}"]) from None
    loader = yaml.SafeLoader(text)
    try:
        node = loader.get_single_node()
        located = LocatedYaml(str(path), None)
        if node is None:
            raise JobFileError(path, ["the file is empty; expected a mapping with at least `train:`"])
        problems: list[str] = []
        located.data = _build(loader, node, (), located, problems)
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        where = f"{path}:{mark.line + 1}" if mark else str(path)
        problem = getattr(e, "problem", None) or str(e)
        raise JobFileError(path, [f"{where}: not valid YAML: {problem}"]) from None
    finally:
        loader.dispose()
    if problems:
        raise JobFileError(path, problems)
    if not isinstance(located.data, dict):
        raise JobFileError(path, [f"{path}:1: expected a mapping of fields at the top, got {_kind(located.data)}"])
    return located


def _build(loader: yaml.SafeLoader, node: yaml.Node, loc: Loc, out: LocatedYaml, problems: list[str]) -> Any:
    out.lines.setdefault(loc, node.start_mark.line + 1)
    if isinstance(node, yaml.MappingNode):
        loader.flatten_mapping(node)
        result: dict[Any, Any] = {}
        for key_node, value_node in node.value:
            key = loader.construct_object(key_node, deep=True)
            if not isinstance(key, str):
                problems.append(f"{out.path}:{key_node.start_mark.line + 1}: field names must be text, got {key!r}")
                continue
            if key in result:
                problems.append(
                    f"{out.path}:{key_node.start_mark.line + 1}: {_dotted(loc + (key,))} is given twice "
                    f"(first on line {out.lines[loc + (key,)]})"
                )
                continue
            out.lines[loc + (key,)] = key_node.start_mark.line + 1
            result[key] = _build(loader, value_node, loc + (key,), out, problems)
        return result
    if isinstance(node, yaml.SequenceNode):
        return [_build(loader, item, loc + (i,), out, problems) for i, item in enumerate(node.value)]
    return loader.construct_object(node, deep=True)


def _dotted(loc: Iterable[str | int]) -> str:
    s = ""
    for part in loc:
        s += f"[{part}]" if isinstance(part, int) else (f".{part}" if s else str(part))
    return s or "(top level)"


def _kind(value: Any) -> str:
    return {dict: "a mapping", list: "a list", str: "text", bool: "true/false", int: "a number",
            float: "a number", type(None): "nothing"}.get(type(value), type(value).__name__)


def validation_problems(
    err: ValidationError,
    doc: LocatedYaml,
    prefix: Loc = (),
    model: type[BaseModel] | None = None,
) -> list[str]:
    """One line per pydantic error: ``file:line: field: what was expected (got ...)``."""
    problems = []
    for e in err.errors(include_url=False):
        # Union members show up in the location as tags ("tiny_gpt", "function-after[...]"); drop them.
        raw_loc = tuple(p for p in e["loc"] if not (isinstance(p, str) and "[" in p))
        loc = prefix + tuple(p for p in raw_loc if p not in _TAGS)
        field_name = _dotted(loc)
        msg = e["msg"]
        if e["type"] == "extra_forbidden":
            msg = "unknown field"
            allowed = _allowed_fields(model, raw_loc) if model else []
            close = difflib.get_close_matches(str(loc[-1]), allowed, n=3, cutoff=0.6)
            if close:
                msg += f"; did you mean {' or '.join(repr(c) for c in close)}?"
            elif allowed:
                msg += f"; expected one of: {', '.join(sorted(allowed))}"
        elif e["type"] == "missing":
            msg = "required field is missing"
        elif "input" in e and e["type"] not in ("value_error", "assertion_error"):
            msg += f" (got {e['input']!r})"
        elif e["type"] == "value_error":
            msg = msg.removeprefix("Value error, ")
        problems.append(f"{doc.where(loc)}: {field_name}: {msg}")
    return problems


#: Tags of tagged unions in the schemas and the model each selects; error locations carry the tag.
_TAGS: dict[str, type[BaseModel]] = {}


def register_tags(tags: dict[str, type[BaseModel]]) -> None:
    _TAGS.update(tags)


def _allowed_fields(model: type[BaseModel], loc: Loc) -> list[str]:
    """Field names allowed at the parent of ``loc`` in ``model``, following nested models and
    union tags (so a field of one recipe is not suggested for another)."""
    current: Any = model
    for part in loc[:-1]:
        if isinstance(part, int):
            continue
        if part in _TAGS:
            current = _TAGS[part]
            continue
        fields = getattr(current, "model_fields", None)
        if not fields or part not in fields:
            return []
        current = _model_of(fields[part].annotation)
        if current is None:
            return []
    fields = getattr(current, "model_fields", None)
    return list(fields) if fields else []


def _model_of(annotation: Any) -> Any:
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return annotation
    for arg in getattr(annotation, "__args__", ()) or ():
        found = _model_of(arg)
        if found is not None:
            return found
    return None
