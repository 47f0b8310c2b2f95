"""Job variables (SkyPilot's convention): ``envs:`` in a job file declares names with defaults,
``${NAME}`` is replaced by its value anywhere else in the file, and the runner's ``--env NAME=VALUE``
overrides a default. The runner passes every value to the trainer as an environment variable, so the
trainer reading the same file in a container gets the same job.

Substitution works on the parsed document, string by string, so line numbers stay right and a value
can never inject YAML structure.

A file may also hold ``presets:`` (name: a partial job file) and ``preset: NAME`` (typically
``preset: ${PRESET}``): the chosen preset is merged over the file, so one variable switches a whole
set of sizes, step counts and windows (the brad job's ``tiny`` trains every stage on a laptop)."""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any

from trainer.jobfile import JobFileError, Loc, LocatedYaml

VARIABLE = re.compile(r"\$\{([^}]*)\}")
NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")


def declared(doc: LocatedYaml) -> dict[str, str]:
    """The file's ``envs:`` defaults, as text; nothing when it has none (or a malformed one, which the
    schema reports)."""
    envs = doc.data.get("envs") if isinstance(doc.data, dict) else None
    if not isinstance(envs, dict):
        return {}
    return {str(k): ("" if v is None else ("true" if v else "false") if isinstance(v, bool) else str(v))
            for k, v in envs.items()}


def values_for(doc: LocatedYaml, overrides: Mapping[str, str]) -> dict[str, str]:
    """Defaults with ``overrides`` applied; an override of a name the file does not declare is an error
    (a misspelled ``--env PRSET=tiny`` must not be silently ignored)."""
    defaults = declared(doc)
    unknown = [n for n in overrides if n not in defaults]
    if unknown:
        listed = ", ".join(sorted(defaults)) or "none"
        raise JobFileError(doc.path, [f"--env {n}: {doc.path} declares no such variable under envs: (declared: {listed})"
                                      for n in unknown])
    return {**defaults, **overrides}


def substitute(doc: LocatedYaml, values: Mapping[str, str]) -> LocatedYaml:
    """``doc`` with every ``${NAME}`` outside ``envs:`` replaced by its value; unknown or malformed
    references are reported together, each with its line."""
    problems: list[str] = []

    def walk(value: Any, loc: Loc) -> Any:
        if isinstance(value, dict):
            return {k: (v if loc == () and k == "envs" else walk(v, loc + (k,))) for k, v in value.items()}
        if isinstance(value, list):
            return [walk(v, loc + (i,)) for i, v in enumerate(value)]
        if not isinstance(value, str) or "${" not in value:
            return value

        def one(match: re.Match[str]) -> str:
            name = match.group(1)
            if not NAME.match(name):
                problems.append(f"{doc.where(loc)}: ${{{name}}}: not a variable name (letters, digits and _)")
            elif name not in values:
                problems.append(f"{doc.where(loc)}: ${{{name}}} is not declared under envs:; add `{name}: DEFAULT` "
                                f"there (submit --env {name}=VALUE then overrides it)")
            else:
                return values[name]
            return match.group(0)

        return VARIABLE.sub(one, value)

    data = walk(doc.data, ())
    if problems:
        raise JobFileError(doc.path, problems)
    return LocatedYaml(doc.path, data, doc.lines)


def resolve(doc: LocatedYaml, values: Mapping[str, str]) -> LocatedYaml:
    """The document as it runs: variables substituted, then the chosen preset merged in."""
    return apply_preset(substitute(doc, values))


def apply_preset(doc: LocatedYaml) -> LocatedYaml:
    """Merge ``presets.<preset>`` over the rest of the file (mappings key by key, anything else replaced);
    a merged value keeps the line it has in the preset, so a problem in it points there."""
    data = doc.data
    if not isinstance(data, dict) or ("preset" not in data and "presets" not in data):
        return doc
    presets, chosen = data.get("presets"), data.get("preset")
    rest = {k: v for k, v in data.items() if k not in ("preset", "presets")}
    if chosen is None:
        return LocatedYaml(doc.path, rest, doc.lines)
    if not isinstance(presets, dict) or not isinstance(presets.get(chosen), dict):
        names = ", ".join(map(str, presets)) if isinstance(presets, dict) else "none (no presets: section)"
        raise JobFileError(doc.path, [f"{doc.where(('preset',))}: preset: {chosen!r} is not one of the file's presets "
                                      f"({names})"])
    lines = dict(doc.lines)

    def merge(base: Any, over: Any, loc: Loc) -> Any:
        if isinstance(base, dict) and isinstance(over, dict):
            return {**base, **{k: merge(base.get(k), v, loc + (k,)) for k, v in over.items()}}
        for key, line in doc.lines.items():  # the preset's lines now stand for these fields
            if key[:len(loc) + 2] == ("presets", chosen, *loc):
                lines[key[2:]] = line
        return over

    return LocatedYaml(doc.path, merge(rest, presets[chosen], ()), lines)
