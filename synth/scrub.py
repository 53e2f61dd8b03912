"""One function that removes credentials from any text synth writes where others may read it.

The dataset card (which `synth push` uploads), the HTML report, the manifest's error messages,
the reasons and details of dropped rows, and the one-line errors the CLI prints all pass through
`scrub`. Credentials get there by accident: a key pasted into a pipeline's description or a YAML
comment, a token in a URL, a server error that quotes the Authorization header back. Patterns
catch the common shapes; the values of secret-named environment variables are removed whatever
their shape.
"""

from __future__ import annotations

import os
import re

REDACTED = "<redacted>"

_PATTERNS: list[tuple[re.Pattern[str], str]] = [
    # Provider tokens with a recognisable prefix.
    (re.compile(r"\bhf_[A-Za-z0-9]{10,}"), REDACTED),
    (re.compile(r"\bsk-[A-Za-z0-9_-]{10,}"), REDACTED),
    (re.compile(r"\b(?:ghp|gho|ghu|ghs|ghr)_[A-Za-z0-9]{20,}"), REDACTED),
    (re.compile(r"\bgithub_pat_[A-Za-z0-9_]{20,}"), REDACTED),
    (re.compile(r"\bglpat-[A-Za-z0-9_-]{20,}"), REDACTED),
    (re.compile(r"\bxox[abposr]-[A-Za-z0-9-]{10,}"), REDACTED),
    (re.compile(r"\b(?:AKIA|ASIA)[A-Z0-9]{16}\b"), REDACTED),
    (re.compile(r"\bAIza[0-9A-Za-z_-]{30,}"), REDACTED),
    (re.compile(r"-----BEGIN [A-Z ]*PRIVATE KEY-----.*?(?:-----END [A-Z ]*PRIVATE KEY-----|\Z)", re.S), REDACTED),
    # An Authorization header quoted back, with any scheme.
    (re.compile(r"(?i)(authorization[\"']?\s*[:=]\s*[\"']?)(?:bearer|basic|token)?\s*[^\s\"',}\]]+"), r"\1" + REDACTED),
    (re.compile(r"(?i)(\bbearer\s+)[A-Za-z0-9._~+/=-]{8,}"), r"\1" + REDACTED),
    # key: value / key=value, with the usual names (also inside YAML comments and JSON).
    (
        re.compile(
            r"(?i)(\b[\w-]*(?:api[_-]?key|access[_-]?key|secret(?:[_-]?key)?|token|password|passwd|pwd|credentials?)"
            r"[\"']?\s*[:=]\s*[\"']?)(?!<redacted>)[^\s\"',}\]]{4,}"
        ),
        r"\1" + REDACTED,
    ),
    # Credentials in a URL: user:password@ and token@ alike.
    (re.compile(r"(?i)\b([a-z][a-z0-9+.-]*://)[^/\s@\"'<>]+@"), r"\1" + REDACTED + "@"),
    # ... and in its query string: ?key=..., &access_token=..., &sig=...
    (
        re.compile(
            r"(?i)([?&][\w.-]*(?:key|token|secret|passw|pwd|auth|credential|signature)[\w.-]*=|[?&]sig=)[^&\s\"'<>#]+"
        ),
        r"\1" + REDACTED,
    ),
]
_SECRET_ENV = re.compile(r"(TOKEN|KEY|SECRET|PASSWORD|PASSWD|CREDENTIAL|AUTH)", re.IGNORECASE)


def scrub(text: str) -> str:
    """`text` with every credential it seems to hold replaced by <redacted>."""
    if not text:
        return text
    for name, value in os.environ.items():
        if _SECRET_ENV.search(name) and len(value) >= 8 and not name.startswith("SYNTH_ALLOW_"):
            text = text.replace(value, REDACTED)
    for pattern, replacement in _PATTERNS:
        text = pattern.sub(replacement, text)
    return text


def scrub_many(texts: list[str]) -> list[str]:
    """scrub over many texts in one pass (the dropped rows of a batch): one look at the
    environment for all of them, not one each."""
    if not texts:
        return texts
    distinct = list(dict.fromkeys(texts))  # a filter's reasons and details repeat a lot
    parts = scrub("\x1e".join(distinct)).split("\x1e")
    if len(parts) != len(distinct):
        parts = [scrub(t) for t in distinct]
    clean = dict(zip(distinct, parts, strict=True))
    return [clean[t] for t in texts]


def without_yaml_comments(text: str) -> str:
    """A pipeline file's text without its comments, for what is published (the card, the report):
    comments are where people paste things they meant to keep. A `#` inside a quoted string or
    a value (`a#b`) is not a comment in YAML and stays."""
    out = []
    for line in text.splitlines():
        cut = _comment_start(line)
        kept = line if cut is None else line[:cut].rstrip()
        if kept.strip() or cut is None:
            out.append(kept)
    return "\n".join(out)


def _comment_start(line: str) -> int | None:
    quote = None
    for i, ch in enumerate(line):
        if quote:
            if ch == quote:
                quote = None
        elif ch in "\"'" and (i == 0 or line[i - 1] in " \t:[{,-"):
            quote = ch
        elif ch == "#" and (i == 0 or line[i - 1] in " \t"):
            return i
    return None
