"""The whole command line is checked against the command's signature before the command runs.

fire calls a command with the arguments it could match and only complains about the rest after the
command has returned, so a misspelled ``--dryrun`` used to launch (and pay for) the whole job before
the error appeared. Here every command line is parsed first, in one place for all commands, and
handed to fire only in a canonical form fire cannot read differently (``--name=value``, bare
boolean flags last), so what is checked is exactly what runs.

Kept light: ``--help`` and the checks import nothing beyond the standard library."""

from __future__ import annotations

import difflib
import inspect
import json
import re
from dataclasses import dataclass
from typing import Any

_TRUE, _FALSE = {"true", "yes", "1", "on"}, {"false", "no", "0", "off"}


class UsageError(Exception):
    """A command line that does not fit the command: one line for the user, exit 2."""


@dataclass(frozen=True)
class Param:
    name: str  # the Python name, e.g. dry_run
    kind: str  # "bool", "int", "float", "str", or "list" (of str: the option may be given again)
    required: bool
    positional: bool
    default: Any
    help: str

    @property
    def flag(self) -> str:
        return "--" + self.name.replace("_", "-")

    @property
    def metavar(self) -> str:
        return {"int": "N", "float": "X"}.get(self.kind, self.name.upper())


def _kind(annotation: Any) -> str:
    text = annotation if isinstance(annotation, str) else getattr(annotation, "__name__", str(annotation))
    types = {t.strip() for t in text.split("|")} - {"None"}
    if any(t.startswith("list") for t in types):
        return "list"
    for kind in ("bool", "int", "float"):
        if types == {kind}:
            return kind
    return "str"


def _docstring_args(doc: str) -> dict[str, str]:
    """The ``Args:`` section of a Google-style docstring, continuation lines joined."""
    helps: dict[str, str] = {}
    lines = inspect.cleandoc(doc or "").splitlines()
    try:
        start = next(i for i, ln in enumerate(lines) if ln.strip() == "Args:")
    except StopIteration:
        return helps
    current = None
    for ln in lines[start + 1:]:
        if not ln.strip():
            break
        m = re.match(r"^\s{4}(\w+):\s*(.*)$", ln)
        if m and len(ln) - len(ln.lstrip()) == 4:
            current = m.group(1)
            helps[current] = m.group(2).strip()
        elif current is not None:
            helps[current] += " " + ln.strip()
    return helps


def summary(method: Any) -> tuple[str, str]:
    """(first sentence, the description before Args:) of a command's docstring."""
    lines = inspect.cleandoc(method.__doc__ or "").splitlines()
    body: list[str] = []
    for ln in lines:
        if ln.strip() == "Args:":
            break
        body.append(ln)
    text = "\n".join(body).strip()
    first = text.split("\n\n")[0].replace("\n", " ")
    return first, text


def params(method: Any) -> list[Param]:
    """The options of a command, from its signature and docstring.

    A parameter without a default, and a leading ``job``, are positional (``runner status JOB``);
    every other one is an option (``--name VALUE``) and is never filled from a stray word."""
    helps = _docstring_args(method.__doc__ or "")
    out = []
    for i, p in enumerate(inspect.signature(method).parameters.values()):
        if p.name == "self":
            continue
        required = p.default is inspect.Parameter.empty
        out.append(Param(name=p.name, kind=_kind(p.annotation), required=required,
                         positional=required or (i <= 1 and p.name == "job"),
                         default=None if required else p.default, help=helps.get(p.name, "")))
    return out


def commands(obj: Any) -> dict[str, Any]:
    """The commands of ``obj``: its public methods, and its command groups (classes of commands)."""
    return {name: getattr(obj, name) for name in dir(type(obj))
            if not name.startswith("_") and callable(getattr(obj, name))}


def is_group(member: Any) -> bool:
    """A command group: a class whose methods are its subcommands (``runner supervisor up``)."""
    return inspect.isclass(member)


def method(obj: Any, name: str) -> Any:
    """The method a parsed command name (``submit``, ``supervisor up``) calls."""
    head, _, sub = name.partition(" ")
    member = commands(obj)[head]
    return commands(member())[sub] if sub else member


def _suggest(word: str, choices: list[str]) -> str:
    close = difflib.get_close_matches(word, choices, n=1, cutoff=0.6)
    return f"; did you mean {close[0]}?" if close else ""


def _convert(param: Param, raw: str, where: str) -> Any:
    if param.kind == "int":
        try:
            return int(raw)
        except ValueError:
            raise UsageError(f"{param.flag} for {where} expects a whole number, got {raw!r}") from None
    if param.kind == "float":
        try:
            return float(raw)
        except ValueError:
            raise UsageError(f"{param.flag} for {where} expects a number, got {raw!r}") from None
    return raw


def _is_option(token: str) -> bool:
    """``--x`` and ``-x`` are options; ``-5`` and ``-0.5`` are values; a lone ``-`` is a value."""
    return token.startswith("-") and token != "-" and not re.match(r"^-\d", token)


def parse(obj: Any, argv: list[str], prog: str = "runner") -> tuple[str, list[str], dict[str, Any]]:
    """Check a command line: (command, positional words, options by Python name).

    Raises UsageError for an unknown command or option, a missing value or argument, a value of
    the wrong type, an option given twice, or a stray positional word."""
    table = commands(obj)
    if not argv:
        raise UsageError(f"no command given; try '{prog} --help'")
    name, rest = argv[0], argv[1:]
    if name not in table:
        if _is_option(name):
            raise UsageError(f"unknown option {name} for '{prog}'; options come after a command, e.g. "
                             f"'{prog} submit JOB {name}'; '{prog} --help' lists the commands")
        raise UsageError(f"unknown command {name!r} for '{prog}'{_suggest(name, sorted(table))}")
    if is_group(table[name]):
        if not rest or rest[0] in ("-h", "--help"):
            raise UsageError(f"'{prog} {name}' needs a command: {', '.join(sorted(commands(table[name]())))}")
        sub, words, options = parse(table[name](), rest, f"{prog} {name}")
        return f"{name} {sub}", words, options
    where = f"'{prog} {name}'"
    spec = params(table[name])
    by_flag = {p.flag: p for p in spec}
    by_flag.update({"--" + p.name: p for p in spec})  # fire's spelling, --dry_run, works too
    words: list[str] = []
    options: dict[str, Any] = {}

    def set_option(p: Param, value: Any, token: str) -> None:
        if p.kind == "list":
            options.setdefault(p.name, []).append(value)
            return
        if p.name in options:
            raise UsageError(f"{p.flag} given twice for {where}")
        options[p.name] = value

    i = 0
    while i < len(rest):
        token = rest[i]
        i += 1
        if token == "--":
            raise UsageError(f"unexpected '--' for {where}; options are written --name VALUE")
        if not _is_option(token):
            words.append(token)
            continue
        flag, has_value, value = token.partition("=")
        p = by_flag.get(flag)
        if p is None and flag.startswith("--no"):  # fire's --nodetach for --detach=false
            negated = by_flag.get("--" + flag[4:].lstrip("-"))
            if negated is not None and negated.kind == "bool" and not has_value:
                set_option(negated, False, token)
                continue
        if p is None:
            choices = sorted({q.flag for q in spec})
            if not flag.startswith("--"):
                raise UsageError(f"unknown option {flag} for {where}; options are spelled in full"
                                 f"{_suggest('--' + flag.lstrip('-'), choices)}")
            raise UsageError(f"unknown option {flag} for {where}{_suggest(flag, choices)}")
        if p.kind == "bool":
            if not has_value:
                set_option(p, True, token)
            elif value.lower() in _TRUE | _FALSE:
                set_option(p, value.lower() in _TRUE, token)
            else:
                raise UsageError(f"{p.flag} for {where} is a switch: give it alone, or {p.flag}=true/false")
            continue
        if not has_value:
            if i >= len(rest) or _is_option(rest[i]):
                raise UsageError(f"{p.flag} for {where} needs a value: {p.flag} {p.metavar}")
            value = rest[i]
            i += 1
        set_option(p, _convert(p, value, where), token)

    positional = [p for p in spec if p.positional and p.name not in options]
    if len(words) > len(positional):
        stray = words[len(positional)]
        named = ", ".join(p.name.upper() for p in positional) or "no word"
        raise UsageError(f"unexpected argument {stray!r} for {where}, which takes {named} before its options")
    for p, word in zip(positional, words, strict=False):  # fewer words than slots: the rest are named
        options[p.name] = _convert(p, word, where)
    missing = [p for p in spec if p.required and p.name not in options]
    if missing:
        p = missing[0]
        raise UsageError(f"{where} needs {p.name.upper()}" + (f" ({p.help.rstrip('.')})" if p.help else "")
                         + f"; usage: {usage(name, spec, prog)}")
    return name, words, options


def canonical(name: str, spec: list[Param], options: dict[str, Any]) -> list[str]:
    """The same call for fire, in a form it cannot read differently: ``--name=value`` for values
    (a bare ``--flag WORD`` would make fire take WORD as the flag's value), switches last."""
    values, switches = [], []
    for p in spec:
        if p.name not in options:
            continue
        value = options[p.name]
        if p.kind == "bool":
            switches.append(f"--{p.name}" if value else f"--no{p.name}")
        elif p.kind == "list":  # fire reads a Python list literal; JSON strings are one
            values.append(f"--{p.name}={json.dumps(list(value))}")
        else:
            values.append(f"--{p.name}={value}")
    return [*name.split(), *values, *switches]


def usage(name: str, spec: list[Param], prog: str = "runner") -> str:
    words = [p.name.upper() if p.required else f"[{p.name.upper()}]" for p in spec if p.positional]
    if any(not p.positional for p in spec):
        words.append("[options]")
    return " ".join([prog, name, *words])


def command_help(obj: Any, name: str, prog: str = "runner") -> str:
    method = commands(obj)[name]
    spec = params(method)
    _first, text = summary(method)
    out = [f"usage: {usage(name, spec, prog)}", "", text, ""]
    rows = [(p.name.upper(), p.help) for p in spec if p.positional]
    if rows:
        out.append("arguments:")
        out += _rows(rows)
        out.append("")
    rows = []
    for p in spec:
        if p.positional:
            continue
        label = p.flag if p.kind == "bool" else f"{p.flag} {p.metavar}"
        default = "" if p.kind == "bool" or p.default in (None, "") else f" (default: {p.default})"
        rows.append((label, p.help + default))
    rows.append(("-h, --help", "show this help and exit"))
    out.append("options:")
    out += _rows(rows)
    return "\n".join(out)


def help_for(obj: Any, args: list[str], prog: str = "runner") -> str:
    """``--help`` of a command, a group, or a group's command."""
    member = commands(obj)[args[0]]
    if not is_group(member):
        return command_help(obj, args[0], prog)
    group = member()
    if len(args) > 1 and args[1] in commands(group):
        return command_help(group, args[1], f"{prog} {args[0]}")
    return main_help(group, f"{prog} {args[0]}")


def main_help(obj: Any, prog: str = "runner") -> str:
    lines = [f"usage: {prog} COMMAND [ARGS] [options]", "", inspect.cleandoc(type(obj).__doc__ or ""), "",
             "commands:"]
    lines += _rows([(name, summary(m)[0]) for name, m in commands(obj).items()])
    lines += ["", f"'{prog} COMMAND --help' lists a command's options" + (
        "." if " " in prog else f"; '{prog} --version' prints the version.")]
    return "\n".join(lines)


def _rows(rows: list[tuple[str, str]], width: int = 100) -> list[str]:
    import textwrap

    left = min(max(len(a) for a, _ in rows) + 2, 28)
    out = []
    for label, text in rows:
        wrapped = textwrap.wrap(text, width=max(width - left - 2, 30)) or [""]
        if len(label) + 2 > left:
            out.append(f"  {label}")
            out += [" " * (left + 2) + w for w in wrapped]
        else:
            out.append(f"  {label.ljust(left)}{wrapped[0]}")
            out += [" " * (left + 2) + w for w in wrapped[1:]]
    return out
