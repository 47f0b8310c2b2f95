"""Loading a job file with the line of every field, and turning schema errors into messages that
name the file, the line, the field and what was expected. Torch-free: the runner uses it too."""

from __future__ import annotations

import difflib
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml
from pydantic import BaseModel, ValidationError
from yaml.composer import Composer
from yaml.constructor import SafeConstructor
from yaml.resolver import Resolver

Loc = tuple[str | int, ...]


class JobFileError(Exception):
    """A job file that cannot be used. ``str()`` is the whole message for the user: one line
    (``file:line: what and why``) for one problem, a head line and one line each for several."""

    def __init__(self, path: str | Path, problems: Sequence[str]):
        self.path = str(path)
        self.problems = list(problems)
        if len(self.problems) == 1:
            only = self.problems[0]
            super().__init__(only if only.startswith(self.path + ":") else f"{self.path}: {only}")
            return
        head = f"{self.path}: invalid job file ({len(problems)} problems)"
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


# --- limits: what any job file stays within, so that no input can cost more than a blink ------------
#: A job file is a few kilobytes; one larger than this is refused before it is parsed.
MAX_BYTES = 1 << 20
#: Values in the document once aliases are expanded (a real job has a few hundred). Bounds alias
#: "bombs", where a few hundred bytes expand to billions of values.
MAX_VALUES = 10_000
#: Nesting depth (a real job goes five levels deep).
MAX_DEPTH = 64
TOO_DEEP = f"nested more than {MAX_DEPTH} levels deep; a job file needs a few"
#: Characters in one value or field name.
MAX_VALUE_CHARS = 65_536

_MERGE_TAG = "tag:yaml.org,2002:merge"
_SEQ_TAG, _MAP_TAG = "tag:yaml.org,2002:seq", "tag:yaml.org,2002:map"
# Characters YAML does not allow in a document (YAML 1.1, 5.1): control characters other than tab,
# line feed and carriage return, surrogates, U+FFFE/U+FFFF.
_NOT_YAML = re.compile("[^\x09\x0a\x0d\x20-\x7e\x85\xa0-\ud7ff\ue000-\ufffd\U00010000-\U0010ffff]")


class _Refused(Exception):
    """A document past one of the limits above, at ``line``."""

    def __init__(self, line: int, what: str):
        super().__init__(what)
        self.line, self.what = line, what


class _BoundedComposer(Composer):
    """PyYAML's composer, counting: nesting depth, values and value length are refused past the
    limits while the events are read, before anything is built from them."""

    def __init__(self) -> None:
        super().__init__()
        self.depth = self.values = 0
        self.first_alias_line: int | None = None

    def compose_node(self, parent: Any, index: Any) -> Any:
        event = self.peek_event()
        line = event.start_mark.line + 1
        if isinstance(event, yaml.AliasEvent):
            if self.first_alias_line is None:
                self.first_alias_line = line
        else:
            self.values += 1
            if self.values > MAX_VALUES:
                raise _Refused(line, f"more than {MAX_VALUES:,} values; a job file has a few hundred")
            if isinstance(event, yaml.ScalarEvent) and len(event.value) > MAX_VALUE_CHARS:
                raise _Refused(line, f"a value of {len(event.value):,} characters; a job file's values are at "
                                     f"most {MAX_VALUE_CHARS:,}")
        self.depth += 1
        try:
            if self.depth > MAX_DEPTH:
                raise _Refused(line, TOO_DEEP)
            return super().compose_node(parent, index)
        finally:
            self.depth -= 1


if getattr(yaml, "__with_libyaml__", False):
    from yaml.cyaml import CParser

    class _Loader(_BoundedComposer, CParser, SafeConstructor, Resolver):
        """libyaml scans and parses (fast, in C); the composing and building above are ours."""

        def __init__(self, text: str):
            CParser.__init__(self, text)
            _BoundedComposer.__init__(self)
            SafeConstructor.__init__(self)
            Resolver.__init__(self)

else:  # a PyYAML built without libyaml: the same, in pure Python
    from yaml.parser import Parser
    from yaml.reader import Reader
    from yaml.scanner import Scanner

    class _Loader(Reader, Scanner, Parser, _BoundedComposer, SafeConstructor, Resolver):  # type: ignore[no-redef]
        def __init__(self, text: str):
            Reader.__init__(self, text)
            Scanner.__init__(self)
            Parser.__init__(self)
            _BoundedComposer.__init__(self)
            SafeConstructor.__init__(self)
            Resolver.__init__(self)


def load_yaml(path: str | Path) -> LocatedYaml:
    """Parse ``path`` keeping line numbers. Duplicate keys are an error (YAML would keep the last).

    Any input is refused or accepted in a fraction of a second and a few megabytes: the file is read
    up to :data:`MAX_BYTES`, and depth, values (aliases expanded) and value length are capped. Every
    refusal is one line, ``file:line: what and why``."""
    path = Path(path)
    text = _read_text(path)
    loader = _Loader(text)
    located = LocatedYaml(str(path), None)
    problems: list[str] = []
    try:
        node = loader.get_single_node()
        if node is None:
            raise JobFileError(path, ["the file is empty; expected a mapping with at least `train:`"])
        located.data = _Builder(loader, located, problems).build(node, ())
    except _Refused as e:
        raise JobFileError(path, [f"{path}:{e.line}: {e.what}"]) from None
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        if "maximum nesting depth" in str(getattr(e, "problem", "")) and mark is not None:
            # libyaml 0.2.5+ (PyYAML 6.0.4's wheels) stops at its own depth, before the count above sees it.
            raise JobFileError(path, [f"{path}:{mark.line + 1}: {TOO_DEEP}"]) from None
        raise JobFileError(path, [_yaml_problem(path, text, e)]) from None
    except (RecursionError, MemoryError, ValueError, TypeError, OverflowError) as e:  # a last guard: never a traceback
        raise JobFileError(path, [f"{path}: cannot read the file: {_one_line(str(e)) or type(e).__name__}"]) from None
    finally:
        loader.dispose()
    if problems:
        raise JobFileError(path, problems)
    if not isinstance(located.data, dict):
        raise JobFileError(path, [f"{path}:1: expected a mapping of fields at the top, got {_kind(located.data)}"])
    return located


def _read_text(path: Path) -> str:
    """The file as text, refused with one line when it is too large, not UTF-8, or not text at all."""
    try:
        with open(path, "rb") as f:
            raw = f.read(MAX_BYTES + 1)
    except FileNotFoundError:
        raise JobFileError(path, ["file not found"]) from None
    except OSError as e:
        raise JobFileError(path, [f"cannot read the file: {e.strerror or e}"]) from None
    if len(raw) > MAX_BYTES:
        try:
            size = f"it is {path.stat().st_size:,} bytes"
        except OSError:
            size = "it goes on"
        line = raw.count(b"\n", 0, MAX_BYTES) + 1
        raise JobFileError(path, [f"{path}:{line}: the file is larger than "
                                  f"{MAX_BYTES:,} bytes (1 MiB), the most a job file may be ({size})"])
    if raw.startswith((b"\xff\xfe", b"\xfe\xff", b"\x00\x00\xfe\xff")):
        raise JobFileError(path, [f"{path}:1: the file is UTF-16 or UTF-32 text (it starts with that byte-order "
                                  f"mark); save it as UTF-8"])
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as e:
        line = raw.count(b"\n", 0, e.start) + 1
        raise JobFileError(path, [f"{path}:{line}: not UTF-8 text (byte 0x{raw[e.start]:02x} at offset {e.start:,}); "
                                  f"a job file is YAML in UTF-8: is this a binary file?"]) from None
    text = text.removeprefix("\ufeff")  # the UTF-8 byte-order mark some editors write: harmless
    bad = _NOT_YAML.search(text) or re.search("\ufeff", text)
    if bad:
        line = text.count("\n", 0, bad.start()) + 1
        char = f"U+{ord(bad.group()):04X}"
        why = ("a byte-order mark in the middle of the file (files joined together?): remove it" if bad.group() == "\ufeff"
               else "YAML allows no control characters: is this a binary file?")
        raise JobFileError(path, [f"{path}:{line}: character {char}; {why}"])
    return text


def _yaml_problem(path: Path, text: str, e: yaml.YAMLError) -> str:
    mark = getattr(e, "problem_mark", None)
    where = f"{path}:{mark.line + 1}" if mark else str(path)
    problem = _one_line(getattr(e, "problem", None) or str(e))
    if mark is not None:
        lines = text.splitlines()
        line = lines[mark.line] if mark.line < len(lines) else ""
        if "\t" in line[: len(line) - len(line.lstrip())]:
            problem += " (a tab in the indentation: YAML indents with spaces only)"
    return f"{where}: not valid YAML: {problem}"


def _one_line(text: str) -> str:
    return " ".join(text.split())


class _Builder:
    """Turns the composed nodes into Python values, recording the line of every key path.

    Aliases are followed, so each is counted again toward :data:`MAX_VALUES`; an alias inside the
    value it names is refused (it would never end). Merge keys (``<<: *defaults``) are applied here
    too, with the same counting, and the keys written out beside them win, as YAML says."""

    def __init__(self, loader: _Loader, out: LocatedYaml, problems: list[str]):
        self.loader, self.out, self.problems = loader, out, problems
        self.values = 0
        self.open: set[int] = set()  # the collections being built, outermost first

    def build(self, node: yaml.Node, loc: Loc) -> Any:
        line = node.start_mark.line + 1
        self.values += 1
        if self.values > MAX_VALUES:
            at = self.loader.first_alias_line or line
            raise _Refused(at, f"more than {MAX_VALUES:,} values once its aliases are expanded (the first alias is on "
                               f"this line); write the values out, or use fewer aliases")
        if len(loc) > MAX_DEPTH:
            raise _Refused(line, f"{dotted(loc[:4])}...: nested more than {MAX_DEPTH} levels deep once its aliases are "
                                 f"expanded")
        self.out.lines.setdefault(loc, line)
        if isinstance(node, yaml.ScalarNode):
            try:
                return self.loader.construct_object(node, deep=True)
            except (ValueError, OverflowError) as e:  # a date like 2024-13-45, a 5,000-digit number
                self.problems.append(f"{self.out.path}:{line}: {dotted(loc)}: cannot read the value "
                                     f"{node.value[:40]!r}: {_one_line(str(e).split(';')[0])}")
                return None
        if node.tag not in (_SEQ_TAG, _MAP_TAG):  # !!set, !!omap, !!python/...: a job file is plain data
            raise _Refused(line, f"{dotted(loc)}: the tag {node.tag.replace('tag:yaml.org,2002:', '!!')} is not allowed "
                                 f"in a job file; write plain mappings and lists")
        if id(node) in self.open:
            raise _Refused(line, f"{dotted(loc)}: a recursive alias: the value contains itself, so it never ends")
        self.open.add(id(node))
        try:
            if isinstance(node, yaml.SequenceNode):
                return [self.build(item, loc + (i,)) for i, item in enumerate(node.value)]
            return self._mapping(node, loc)
        finally:
            self.open.discard(id(node))

    def _mapping(self, node: yaml.MappingNode, loc: Loc) -> dict[str, Any]:
        path, lines = self.out.path, self.out.lines
        result: dict[str, Any] = {}
        merged: dict[str, Any] = {}
        for key_node, value_node in node.value:
            key_line = key_node.start_mark.line + 1
            if key_node.tag == _MERGE_TAG:
                sources = value_node.value if isinstance(value_node, yaml.SequenceNode) else [value_node]
                for source in sources:
                    if not isinstance(source, yaml.MappingNode):
                        self.problems.append(f"{path}:{key_line}: {dotted(loc)}: `<<` merges mappings only, got "
                                             f"{_kind(self.build(source, loc))}")
                        continue
                    for k, v in self.build(source, loc).items():
                        merged.setdefault(k, v)  # an earlier source wins over a later one
                continue
            if not isinstance(key_node, yaml.ScalarNode):
                self.problems.append(f"{path}:{key_line}: field names must be text, got a "
                                     f"{'list' if isinstance(key_node, yaml.SequenceNode) else 'mapping'}")
                continue
            key = self.build(key_node, loc + ("<key>",))
            if not isinstance(key, str):
                self.problems.append(f"{path}:{key_line}: field names must be text, got {key!r}")
                continue
            if key in result:
                self.problems.append(
                    f"{path}:{key_line}: {dotted(loc + (key,))} is given twice (first on line {lines[loc + (key,)]})"
                )
                continue
            lines[loc + (key,)] = key_line
            result[key] = self.build(value_node, loc + (key,))
        lines.pop(loc + ("<key>",), None)
        return {**merged, **result} if merged else result


def dotted(loc: Iterable[str | int]) -> str:
    """A field's path as a job file's reader writes it: ``train.data.train[0]``."""
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
        field_name = dotted(loc)
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
