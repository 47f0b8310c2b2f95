"""Keeping secrets out of job files, the state database and logs.

A job file lists the NAMES of the environment variables to forward (``secrets:``); their values
come from the submitting shell at launch time and go only into the trainer's environment. This
module recognises values that look like credentials so a job file that holds one is refused, and
redacts known secret values from text before it is stored or printed."""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping

#: Patterns of credentials that are recognisable by their value alone.
_VALUE_PATTERNS: tuple[tuple[str, re.Pattern[str]], ...] = (
    ("an AWS access key id", re.compile(r"\b(?:AKIA|ASIA|ABIA|ACCA|AGPA|AIDA|AIPA|ANPA|ANVA|APKA|AROA|ASCA)[A-Z0-9]{16}\b")),
    ("an API key (sk-…)", re.compile(r"\bsk-[A-Za-z0-9_\-]{16,}")),
    ("a Hugging Face token", re.compile(r"\bhf_[A-Za-z0-9]{20,}")),
    ("a RunPod API key", re.compile(r"\brpa_[A-Za-z0-9]{20,}")),
    ("a GitHub token", re.compile(r"\b(?:gh[pousr]_[A-Za-z0-9]{30,}|github_pat_[A-Za-z0-9_]{20,})")),
    ("a Slack token", re.compile(r"\bxox[abprs]-[A-Za-z0-9-]{10,}")),
    ("a private key", re.compile(r"-----BEGIN [A-Z ]*PRIVATE KEY-----")),
    ("a JSON web token", re.compile(r"\beyJ[A-Za-z0-9_-]{10,}\.eyJ[A-Za-z0-9_-]{10,}\.")),
)
#: AWS secret access keys have no prefix: 40 characters of base64 with mixed case and digits.
_AWS_SECRET = re.compile(r"^[A-Za-z0-9/+]{40}$")
#: Words in a variable name that say its value is a credential (matched against ``_``-separated parts).
_SECRET_NAME_WORDS = {"TOKEN", "SECRET", "PASSWORD", "PASSWD", "APIKEY", "CREDENTIAL", "CREDENTIALS", "PRIVATEKEY"}
_SECRET_NAME_PAIRS = {("API", "KEY"), ("ACCESS", "KEY"), ("PRIVATE", "KEY"), ("SECRET", "KEY"), ("AUTH", "KEY")}

ENV_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")


def looks_like_secret_value(value: str, *, strict: bool = False) -> str | None:
    """What kind of credential ``value`` looks like, or None.

    ``strict`` adds the prefix-less AWS secret key shape, which is only worth checking where a
    credential is plausible (``env:`` and ``secrets:``): elsewhere a 40-character name is common."""
    for kind, pattern in _VALUE_PATTERNS:
        if pattern.search(value):
            return kind
    if strict and _AWS_SECRET.match(value) and any(c.isupper() for c in value) and any(c.islower() for c in value) \
            and any(c.isdigit() for c in value):
        return "an AWS secret access key"
    return None


def looks_like_secret_name(name: str) -> bool:
    """True for variable names such as HF_TOKEN, AWS_SECRET_ACCESS_KEY, WANDB_API_KEY, DB_PASSWORD."""
    parts = [p for p in name.upper().split("_") if p]
    if any(p in _SECRET_NAME_WORDS for p in parts):
        return True
    return any(pair in _SECRET_NAME_PAIRS for pair in zip(parts, parts[1:], strict=False))


def forwarded(names: Iterable[str], environ: Mapping[str, str]) -> tuple[dict[str, str], list[str]]:
    """The values of the secrets named by a job, from ``environ``; and the names that are not set."""
    values, missing = {}, []
    for name in names:
        if environ.get(name):
            values[name] = environ[name]
        else:
            missing.append(name)
    return values, missing


def redact(text: str, secret_values: Iterable[str]) -> str:
    """``text`` with every known secret value, and anything that looks like a credential, replaced."""
    for value in secret_values:
        if value and len(value) >= 4:
            text = text.replace(value, "***")
    for _kind, pattern in _VALUE_PATTERNS:
        text = pattern.sub("***", text)
    return text
