"""The pairwise judge's verdicts: the answer's JSON schema and parser, the seeded position swap,
the both-orders agreement rule and WildBench's length rule. Pure and deterministic, so verdicts
can be replayed from cached answers (changing `length_tie_chars` sends no request).

WildBench's answer (eval_template.pairwise.v2.md): an analysis of A, an analysis of B, a reason
for each of A=B, A>B and B>A, then the choice, one of A++ (A much better), A+ (slightly better),
A=B, B+ and B++. synth reports the choice as A>>B, A>B, A=B, B>A, B>>A, and keeps the analyses and
reasons in the row's own A/B terms."""

from __future__ import annotations

from typing import Any

from ..common import find_json
from .rubric import rationale_schema

PAIRWISE_COLUMNS = [
    "judge_verdict",
    "judge_reward",
    "judge_swapped",
    "judge_raw_verdicts",
    "judge_verdict_rationales",
    "judge_length_tie",
]
VERDICTS = ("A>>B", "A>B", "A=B", "B>A", "B>>A")  # A=B is a tie
REWARD = {"A>>B": 1.0, "A>B": 0.5, "A=B": 0.0, "B>A": -0.5, "B>>A": -1.0}  # WB-Reward, from A's side
_SWAP = {"A>>B": "B>>A", "A>B": "B>A", "A=B": "A=B", "B>A": "A>B", "B>>A": "A>>B"}
_ALIASES = {"TIE": "A=B", "B=A": "A=B", "A==B": "A=B", "B==A": "A=B", "B<<A": "A>>B", "B<A": "A>B"}
_ALIASES.update({"A<B": "B>A", "A<<B": "B>>A"})
CHOICES = {"A++": "A>>B", "A+": "A>B", "A=B": "A=B", "B+": "B>A", "B++": "B>>A"}  # WildBench's five
_ALIASES.update(CHOICES)
ANALYSES = ("analysis of A", "analysis of B", "reason of A=B", "reason of A>B", "reason of B>A")
_SWAP_KEYS = {"analysis of A": "analysis of B", "analysis of B": "analysis of A", "reason of A>B": "reason of B>A"}
_SWAP_KEYS["reason of B>A"] = "reason of A>B"


def pairwise_schema(max_chars: int | None) -> dict:
    """WildBench's answer: the analyses and reasons first, then the choice."""
    properties = {key: rationale_schema(max_chars) for key in ANALYSES}
    properties["choice"] = {"type": "string", "enum": list(CHOICES)}
    return {"type": "object", "properties": properties, "required": list(properties), "additionalProperties": False}


def normalize_verdict(value: Any) -> str | None:
    """One of VERDICTS from the ways models write them ("A >> B", "a>b", "tie", "B<A"), or None."""
    text = "".join(str(value).split()).upper()
    text = _ALIASES.get(text, text)
    return text if text in VERDICTS else None


def parse_pairwise(text: str) -> tuple[str, dict] | None:
    """(verdict, {analysis or reason: text}) from a pairwise answer (WildBench's "choice", or a
    custom template's "verdict" with a "rationale"), or None."""
    data = find_json(text)
    if data is None:
        return None
    verdict = normalize_verdict(data.get("choice", data.get("verdict", "")))
    if verdict is None:
        return None
    keys = [k for k in (*ANALYSES, "rationale") if data.get(k) is not None]
    return verdict, {k: str(data[k]).strip() for k in keys}


def unswap_rationale(rationale: dict, swapped: bool) -> dict:
    """The analyses and reasons of a judgment shown swapped, in the row's own A/B terms."""
    return {_SWAP_KEYS.get(k, k): v for k, v in rationale.items()} if swapped else dict(rationale)


def unswap(verdict: str, swapped: bool) -> str:
    """A verdict on the positions shown to the judge, in the row's original A/B terms."""
    return _SWAP[verdict] if swapped else verdict


def combine(first: str, second: str) -> str:
    """Two judgments of one pair (both orders, original terms) as one: the same verdict stays;
    the same winner at two strengths gives the milder one; different winners give a tie."""
    if first == second:
        return first
    a, b = REWARD[first], REWARD[second]
    if a * b > 0:
        return first if abs(a) < abs(b) else second
    return "A=B"


def length_rule(verdict: str, len_a: int, len_b: int, max_chars: int | None) -> str:
    """WildBench's length rule: a "slightly better" verdict (A>B, B>A) becomes a tie when the
    winner is longer than the loser by more than `max_chars` characters (None: never)."""
    if max_chars is None:
        return verdict
    if verdict == "A>B" and len_a - len_b > max_chars:
        return "A=B"
    if verdict == "B>A" and len_b - len_a > max_chars:
        return "A=B"
    return verdict


def empty_verdict(a: str, b: str) -> str | None:
    """WildBench's rule for empty responses: an empty one loses without a call; both empty tie."""
    if a.strip() and b.strip():
        return None
    if not a.strip() and not b.strip():
        return "A=B"
    return "B>>A" if not a.strip() else "A>>B"


def coin(seed: int) -> bool:
    """A seeded fair coin: whether to show a row's B response first."""
    return bool(seed & 1)


def pairwise_columns(verdicts: list[str], rationales: list[str], swaps: list[bool], lengths: tuple[int, int], k):
    """A row's columns from its judgments: verdicts as the judge gave them on the positions shown
    (one, or two with both orders), whether each showed B first, and the responses' lengths."""
    raw = [unswap(v, s) for v, s in zip(verdicts, swaps, strict=True)]
    combined = raw[0] if len(raw) == 1 else combine(raw[0], raw[1])
    verdict = length_rule(combined, *lengths, k)
    return {
        "judge_verdict": verdict,
        "judge_reward": REWARD[verdict],
        "judge_swapped": swaps[0],
        "judge_raw_verdicts": raw,
        "judge_verdict_rationales": [
            unswap_rationale(r, s) if isinstance(r, dict) else r for r, s in zip(rationales, swaps, strict=True)
        ],
        "judge_length_tie": verdict != combined,
    }
