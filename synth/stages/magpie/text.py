"""Magpie's instruction clean-up (str_utils.instruction_post_process in the authors' code).

Models whose templates leak past the user turn (Gemma-2, Llama-3.1/3.3) often write a label, the
question, then start answering it. The sanitizer keeps the question. It returns the class of fix
applied so the dataset records what happened to each row (`instruction_sanitize_class_num`):

    0 unchanged   1 label prefix removed   2 cut at an answer marker
    3 cut after the first question mark    4 cut to the first line
(Our own numbering: the paper's code does not document its classes.)
"""

from __future__ import annotations

import re

_PREFIX = re.compile(
    r"^\s*(?:\*\*|__)?(?:task|question|query|instruction|user|problem|request|q\d*|\d+)\s*[:.)]\s*(?:\*\*|__)?\s*",
    re.IGNORECASE,
)
_ANSWER_MARKERS = ("Answer:", "Solution:", "Explanation:", "The answer is", "**Answer", "**Solution", "A:")
_LLAMA_MARKERS = ("# Step 1", "## Step 1")


def sanitize_instruction(text: str, family: str = "") -> tuple[str, int]:
    original = text.strip()
    cleaned = _PREFIX.sub("", original, count=1).strip()
    fix = 1 if cleaned != original else 0
    markers = _ANSWER_MARKERS + (_LLAMA_MARKERS if family.startswith("llama") else ())
    cut = min((cleaned.find(m) for m in markers if cleaned.find(m) > 0), default=-1)
    if cut > 0:
        return cleaned[:cut].strip(), 2
    if "\n" in cleaned:
        first_line = cleaned.split("\n", 1)[0].strip()
        question = cleaned.find("?")
        if question > 0 and question < len(cleaned) - 1 and "\n" in cleaned[question:]:
            return cleaned[: question + 1].strip(), 3
        if first_line:
            return first_line, 4
    return cleaned, fix
