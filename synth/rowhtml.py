"""Rows as HTML for people to read, in the report (the viewer builds the same shapes in the page):
a preference pair side by side, a conversation as turns, any other row as a table of columns.

Every value goes through `html.escape` (LLM answers may hold `<script>`); long texts fold into
`<details>`; fenced code shows as code; the words where chosen and rejected differ are marked.
"""

from __future__ import annotations

import difflib
import html
import json
import re

FOLD_CHARS = 700
FENCE = re.compile(r"```[^\n]*\n(.*?)(?:```|\Z)", re.S)
STYLE = """.pair{display:grid;grid-template-columns:1fr 1fr;gap:.8em}.side{border-radius:6px;padding:.4em .7em}
.chosen{background:#eef7ee}.rejected{background:#fbeeee}.prompt,.user{background:#f0f3f8}.assistant{background:#eef7ee}
.system{background:#fff8e1}.turn,.prompt{border-radius:6px;padding:.4em .7em;margin:.3em 0}
.role{font-size:.8em;color:#666;text-transform:uppercase}.scores{font-size:.9em;color:#444}
.text{white-space:pre-wrap;overflow-wrap:anywhere}mark{background:#ffe08a}.row{border:1px solid #ddd;
border-radius:6px;padding:.5em .8em;margin:1em 0}.kv td{text-align:left;vertical-align:top}
.label-good{color:#2e7d32}.label-bad{color:#c62828}"""


def _e(value) -> str:
    return html.escape(str(value), quote=True)


def _text(text: str) -> str:
    """Text as pre-wrapped lines, fenced code as code blocks, folded when long."""
    out, at = [], 0
    for match in FENCE.finditer(text):
        out.append(f'<div class="text">{_e(text[at : match.start()])}</div>')
        out.append(f"<pre><code>{_e(match.group(1))}</code></pre>")
        at = match.end()
    out.append(f'<div class="text">{_e(text[at:])}</div>')
    body = "".join(out)
    if len(text) > FOLD_CHARS:
        return f"<details><summary>{_e(text[:160])}… ({len(text):,} characters)</summary>{body}</details>"
    return body


def _value(value) -> str:
    if isinstance(value, str):
        return _text(value)
    if isinstance(value, dict | list):
        return _text(json.dumps(value, ensure_ascii=False, indent=1, default=str))
    return _e(value)


def _table(row: dict, keys: list[str]) -> str:
    cells = "".join(f"<tr><td><code>{_e(k)}</code></td><td>{_value(row[k])}</td></tr>" for k in keys)
    return f'<table class="kv">{cells}</table>'


def _plain(value) -> str:
    if isinstance(value, str):
        return value
    if isinstance(value, list) and all(isinstance(m, dict) for m in value):
        said = [m for m in value if m.get("role") == "assistant"] or value
        return "\n\n".join(str(m.get("content", "")) for m in said)
    return json.dumps(value, ensure_ascii=False, default=str)


def _marked(words: list[str], keep: set[int]) -> str:
    return "".join(_e(w) if i in keep or not w.strip() else f"<mark>{_e(w)}</mark>" for i, w in enumerate(words))


def differences(a: str, b: str) -> tuple[str, str]:
    """Both texts escaped, with the words that the other lacks marked."""
    left, right = re.split(r"(\s+)", a), re.split(r"(\s+)", b)
    same_left, same_right = set(), set()
    for block in difflib.SequenceMatcher(None, left, right, autojunk=False).get_matching_blocks():
        same_left.update(range(block.a, block.a + block.size))
        same_right.update(range(block.b, block.b + block.size))
    return _marked(left, same_left), _marked(right, same_right)


def _turns(messages: list[dict]) -> str:
    out = []
    for m in messages:
        role = str(m.get("role", m.get("from", "")))
        kind = "user" if role in ("user", "human") else "system" if role == "system" else "assistant"
        out.append(
            f'<div class="turn {kind}"><div class="role">{_e(role)}</div>{_text(str(m.get("content", "")))}</div>'
        )
    return "".join(out)


def _responses(row: dict) -> str | None:
    return next((c for c in ("response", "responses") if isinstance(row.get(c), list)), None)


def _pair(row: dict, shown: set[str]) -> str:
    parts = []
    prompt_key = next((k for k in ("prompt", "instruction", "question") if k in row), None)
    if prompt_key:
        shown.add(prompt_key)
        prompt = row[prompt_key]
        inner = _text(prompt) if isinstance(prompt, str) else _turns(prompt or [])
        parts.append(f'<div class="prompt"><div class="role">prompt ({_e(prompt_key)})</div>{inner}</div>')
    chosen, rejected = _plain(row["chosen"]), _plain(row["rejected"])
    marked = dict(zip(("chosen", "rejected"), differences(chosen, rejected), strict=True))
    responses = _responses(row)
    shown.update({"chosen", "rejected", "margin", "chosen_index", "rejected_index"})
    sides = []
    for side in ("chosen", "rejected"):
        facts = [f"score {row[f'score_{side}']}"] if f"score_{side}" in row else []
        shown.add(f"score_{side}")
        index = row.get(f"{side}_index")
        if isinstance(index, int) and responses:
            count = len(row[responses])
            for k, v in row.items():
                if k != responses and isinstance(v, list) and len(v) == count:
                    shown.add(k)
                    item = v[index]
                    if isinstance(item, dict):  # per criterion: a judge's rationales
                        item = "; ".join(f"{a}: {b}" for a, b in item.items())
                    facts.append(f"{k} {item}")
        sides.append(
            f'<div class="side {side}"><h4>{side}</h4><div class="scores">{_e(" · ".join(facts))}</div>'
            f'<div class="text">{marked[side]}</div></div>'
        )
    if responses:
        shown.add(responses)
    margin = f'<div class="scores">margin {_e(row["margin"])}</div>' if "margin" in row else ""
    judge = [k for k in row if k not in shown and re.search(r"verdict|rationale|^judge|critique", k)]
    shown.update(judge)
    return "".join(parts) + margin + f'<div class="pair">{"".join(sides)}</div>' + (_table(row, judge) if judge else "")


def _conversation(row: dict, shown: set[str]) -> str:
    if isinstance(row.get("messages"), list):
        shown.add("messages")
        return _turns(row["messages"])
    turns = []
    if isinstance(row.get("system"), str) and row["system"]:
        turns.append({"role": "system", "content": row["system"]})
        shown.add("system")
    k = 1
    while (q := "instruction" if k == 1 else f"instruction_{k}") in row:
        a = "response" if k == 1 else f"response_{k}"
        shown.add(q)
        turns.append({"role": "user", "content": row[q]})
        if isinstance(row.get(a), str):
            shown.add(a)
            turns.append({"role": "assistant", "content": row[a]})
        k += 1
    out = _turns(turns)
    responses = _responses(row)
    if responses:
        shown.add(responses)
        for i, text in enumerate(row[responses]):
            out += f'<div class="turn assistant"><div class="role">response #{i}</div>{_text(str(text))}</div>'
    return out


def row_html(row: dict, label: dict | None = None) -> str:
    """One row: its label if people gave it one (`synth view`), its shape (pair, conversation),
    then its other columns in a folded table."""
    shown = {"provenance"}
    head = ""
    if label:
        note = f": {_e(label['note'])}" if label.get("note") else ""
        head = f'<p class="label-{_e(label["label"])}"><strong>labelled {_e(label["label"])}</strong>{note}</p>'
    if "chosen" in row and "rejected" in row:
        main = _pair(row, shown)
    elif isinstance(row.get("messages"), list) or "instruction" in row:
        main = _conversation(row, shown)
    else:
        return f'<div class="row">{head}{_table(row, [k for k in row if k != "provenance"])}</div>'
    rest = [k for k in row if k not in shown]
    more = f"<details><summary>other columns ({len(rest)})</summary>{_table(row, rest)}</details>" if rest else ""
    return f'<div class="row">{head}{main}{more}</div>'
