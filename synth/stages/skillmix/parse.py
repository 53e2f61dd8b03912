"""Reading the instruction and response out of Instruct-SkillMix's conversation (the authors'
`extract_relevant_info_gpt` and `extract_relevant_info_claude`, made tolerant of what weaker models
write).

Turn outputs are numbered as in the authors' files: 0 the first query and answer, 1 the rewrite if
cut off, 2 the critique, 3 the refined query and answer, 4 the rewrite of the refined answer.

- final pair: the instruction from output 3 (after `Instruction:`, before `Response:`), else from
  output 4; the response from output 4 when it holds neither word `Instruction` nor `Response` (a
  bare rewrite), else after its first `Response:`; else the same from output 3.
- draft pair (before refinement): the instruction from output 0, the response from output 1 the
  same way, else from output 0.

Headers are found in any case, with or without `###`, bold `**`, a `Refined`/`Improved`/`Revised`
qualifier, the `Query:` spelling some models use and `### Answer:`; surrounding quotes are removed. A header
that was cut off (`### Resp`) is no header: the text before it is kept and the answer is missing.
"""

from __future__ import annotations

import re

# complete mode (base models): what the stage appends to each turn's few-shot prompt; the model's
# text continues it, and the header joins the text before parsing
PREFILL = (
    "### Instruction:",
    "### Response:",
    "### Strengths and weaknesses:\n",
    "### Refined Instruction:",
    "### Refined Response:",
)

_QUALIFIER = r"(?:(?:refined|improved|revised|updated|final|new|rewritten)\s+)?"
_HEAD = r"(?:^|\n|(?<=\s))[ \t]*(?:#+[ \t]*)?(?:\*\*)?[ \t]*" + _QUALIFIER
INSTRUCTION = re.compile(_HEAD + r"(?:instruction|query)[ \t]*(?:\*\*)?[ \t]*:[ \t]*(?:\*\*)?", re.IGNORECASE)
RESPONSE = re.compile(
    r"(?:" + _HEAD + r"response|(?:^|\n)[ \t]*#+[ \t]*" + _QUALIFIER + r"answer)[ \t]*(?:\*\*)?[ \t]*:[ \t]*(?:\*\*)?",
    re.IGNORECASE,
)
_LEFTOVER = re.compile(r"(?:^|\s)#+[ \t]*(?:refined|improved|revised)?[ \t]*$", re.IGNORECASE)
# a header cut off by max_tokens at the end of a text ("### Resp", "**Refined Res")
_STUB = re.compile(r"\n[ \t]*(?:#+|\*\*)[ \t]*[A-Za-z]*(?:[ \t]+[A-Za-z]*)?[ \t]*$")
_QUOTES = {'"': '"', "'": "'", "\u201c": "\u201d", "\u2018": "\u2019", "`": "`"}


def clean(text: str | None) -> str | None:
    """Strip whitespace, a trailing lone `###` (or `### Refined`) left by the next header, and one
    pair of surrounding quotes; None when nothing is left."""
    if text is None:
        return None
    text = text.strip()
    while True:
        cut = _LEFTOVER.sub("", text).rstrip()
        if cut == text:
            break
        text = cut
    text = text.strip().strip("*").strip()
    if len(text) >= 2 and _QUOTES.get(text[0]) == text[-1]:
        text = text[1:-1].strip()
    return text or None


def instruction_of(text: str | None) -> str | None:
    """The text after the first instruction header, up to a response header; None without one."""
    if not text:
        return None
    found = INSTRUCTION.search(text)
    if found is None:
        return None
    rest = text[found.end() :]
    end = RESPONSE.search(rest)
    return clean(rest[: end.start()] if end else _STUB.sub("", rest))


def response_of(text: str | None, bare: bool = False) -> str | None:
    """The text after the first response header. `bare`: a text with neither header, nor the
    words Instruction/Response (the authors' test), is itself the response (a rewrite that gives
    the response only)."""
    if not text:
        return None
    found = RESPONSE.search(text)
    if found:
        return clean(text[found.end() :])
    if bare and "Instruction" not in text and "Response" not in text and INSTRUCTION.search(text) is None:
        return clean(text)
    return None


def final_pair(outputs: list[str | None]) -> tuple[str | None, str | None]:
    """(instruction, response) after refinement, from outputs 3 and 4 (module docstring)."""
    o3 = outputs[3] if len(outputs) > 3 else None
    o4 = outputs[4] if len(outputs) > 4 else None
    instruction = instruction_of(o3) or instruction_of(o4)
    response = response_of(o4, bare=True) or response_of(o3)
    return instruction, response


def draft_pair(outputs: list[str | None]) -> tuple[str | None, str | None]:
    """(instruction, response) before refinement, from outputs 0 and 1."""
    o0 = outputs[0] if outputs else None
    o1 = outputs[1] if len(outputs) > 1 else None
    return instruction_of(o0), response_of(o1, bare=True) or response_of(o0)


def skill_names(value) -> list[str]:
    """A row's skills: a list, or names joined by ", " (the authors' `skills_joined_str`)."""
    if isinstance(value, str):
        return [s.strip() for s in value.split(",") if s.strip()]
    return [str(s) for s in value or []]


def turn_variables(row: dict, outputs: list[str], columns: tuple[str, str, str], complete: bool) -> dict:
    """What a turn's template sees: the row, its skills and query type, and what the turns so far
    gave (parsed: the few-shot prompts of `complete` mode show the earlier results, not the chat)."""
    skills = skill_names(row.get(columns[0]))
    name, definition = str(row.get(columns[1]) or ""), str(row.get(columns[2]) or "")
    draft = draft_pair(outputs) if outputs else (None, None)
    if complete and len(outputs) == 1:  # turn 1 rewrites turn 0's answer
        draft = (instruction_of(outputs[0]), response_of(outputs[0]))
    refined = (instruction_of(outputs[3]), response_of(outputs[3])) if len(outputs) > 3 else (None, None)
    return {
        **row,
        "row": row,
        "skills": skills,
        "skills_str": ", ".join(skills),
        "num_skills": len(skills),
        "query_type": name,
        "query_definition": definition,
        "query": f"{name}: {definition}" if definition else name,
        "draft_instruction": draft[0] or "",
        "draft_response": draft[1] or "",
        "critique": (clean(outputs[2].removeprefix(PREFILL[2])) or "") if len(outputs) > 2 else "",
        "refined_instruction": refined[0] or draft[0] or "",
        "refined_response": refined[1] or "",
        "outputs": list(outputs),
    }
