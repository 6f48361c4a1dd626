"""Score free-form replies (instruction tasks): a pairwise judge, plus reference-free checks.

Why pairwise, and why A-or-B: held-out prompts of an instruction task have no reference reply, so
the student's reply is compared with the teacher's by a judge model. Small judges fail on 1-5
scales (off-topic replies rated 4-5, a rubric always answered 3: ../shared/FACTS.md) but a yes/no
question at temperature 0 held up, so the judge is asked one thing: "is A better than B?".

Why both orders: judges prefer a position (often the first). Each input is judged twice with the
replies swapped; only a verdict that survives the swap counts. Student preferred in both orders
= win, teacher in both = loss; disagreement (position bias) or an unreadable verdict = tie. The
win rate counts a tie as half, so a judge that always answers "A" gives exactly 0.5 — "no
evidence either way" — instead of flattering whichever model sat first.

Why also a graded judge: a 0.5B judge answers "A" to every A-or-B prompt (measured on Banking77
messages: six clearly good-vs-useless pairs, both orders, current and reworded prompts, twelve "A"s;
the top-token logprobs of A and B moved by under 0.1 with the content), and so does the 1.5B
default teacher (the instruction demo: 40 messages, base and student each against the teacher,
160 verdicts, position bias 1.0, all 80 outcomes ties). Asked about ONE reply
("does this reply answer the message helpfully? yes or no", with the style guide) the same model
told good replies from useless ones (no wrong verdict; undecided ones come out as ties); the 1.5B
teacher did not: on the instruction demo it said yes to all 120 replies, the base model's ten
refusals included (all ties again, and a yes rate of 1.0 in the metrics says why). So
`grade` asks that yes/no question of each reply alone, and `compare_grades` turns the two grades
of an input into an outcome: student yes and teacher no = win, the reverse = loss, same = tie.
No position exists to be biased towards, and a judge that always says "yes" again gives only ties.

`ask` is any callable from chat messages to the raw answer text (`endpoint_ask` builds one for an
OpenAI-compatible endpoint, the teacher's included; tests pass plain functions), so the
aggregation is testable without a server and the judge can be any model.

`reply_checks` are cheap checks that need no judge: a reply's length within the style guide's
bounds, a refusal, or a request for secrets (full card number, PIN, password, CVV, one-time code)
that a bank's assistant must never make. They are heuristics (phrase lists), tuned to flag asks
and not warnings such as "never share your PIN".
"""
from __future__ import annotations

import re
from dataclasses import dataclass
from typing import TYPE_CHECKING, Callable

import numpy as np
from distilforge.errors import DataError
from distilforge.secrets import reveal

from heldout.evaluate import bootstrap_ci, progress

if TYPE_CHECKING:
    from distilforge.teacher import Endpoint

Ask = Callable[[list[dict]], str]

JUDGE_SYSTEM = ("You compare two replies to the same request and pick the better one: the one that follows "
                "the instruction and actually helps with the message. Answer with a single letter, A or B.")


def judge_messages(instruction: str, input: str, answer_a: str, answer_b: str) -> list[dict]:
    """The judge's chat messages: one A-or-B question (see the module doc for why not a scale)."""
    user = (f"Instruction: {instruction.strip()}\n\nMessage: {input.strip()}\n\n"
            f"Response A:\n{answer_a.strip()}\n\nResponse B:\n{answer_b.strip()}\n\n"
            "Is response A better than response B for this request? Answer A or B.")
    return [{"role": "system", "content": JUDGE_SYSTEM}, {"role": "user", "content": user}]


_LEAD = re.compile(r"^[\s*_`'\"(\[]*(?:(?:the\s+)?(?:answer|verdict|better(?:\s+one)?|response|reply|choice)"
                   r"(?:\s+is)?\s*[:\-]?\s*[*_`'\"(\[]*\s*)*([AB])(?![A-Za-z0-9])", re.I)
_AFTER = re.compile(r"$|[.,:;)!*_`'\"\n\u2014-]|\s*(?:is|was|wins|would|because|better)\b", re.I)
_NAMED = re.compile(r"\b(?:response|reply)\s+([AB])\b", re.I)


def parse_verdict(text: str | None) -> str | None:
    """"A", "B" or None from the judge's raw text.

    Accepted: the letter first, alone or followed by punctuation or "is/wins/because..." ("A",
    "**B**", "A.", "Answer: B", "Response A is better"); else a text that names exactly one
    response ("I prefer response B"). Not a verdict: "A good reply would..." (an article), both
    or neither named, an empty answer — None, which the caller counts as a tie."""
    t = (text or "").strip()
    m = _LEAD.match(t)
    if m and _AFTER.match(t, m.end()) and (m.group(1).isupper() or m.start(1) > 0 or len(t) == 1):
        return m.group(1).upper()  # a lowercase letter counts alone or after a lead-in ("answer: b")
    named = {x.upper() for x in _NAMED.findall(t)}
    return named.pop() if len(named) == 1 else None


def judge_pair(ask: Ask, instruction: str, input: str, answer_a: str, answer_b: str) -> str | None:
    """Ask the judge once whether A beats B: "A", "B", or None when its answer is unreadable."""
    return parse_verdict(ask(judge_messages(instruction, input, answer_a, answer_b)))


def _row(row, instruction: str | None) -> tuple[str, str]:
    if isinstance(row, str):
        return instruction or "", row
    return row.get("instruction", instruction) or "", row["input"]


def compare(ask: Ask, rows: list, student_answers: list[str], teacher_answers: list[str], *,
            instruction: str | None = None, n_boot: int = 2000, seed: int = 0, desc: str = "judging") -> dict:
    """Student vs teacher on each input, judged in both orders (module doc: why).

    `rows`: per input a dict with "input" (and "instruction", else `instruction`) or the input text.
    Returns a JSON-ready dict: `n`; `wins`/`ties`/`losses` counts; `win_rate`, `tie_rate`,
    `loss_rate` and `win_rate_tie_half` (a tie counts half), each with a bootstrap 95 % CI over
    inputs; `unparsable` (verdicts the judge gave that could not be read); `position_bias` (share
    of inputs where both verdicts named the same position); `per_row` [{outcome, verdicts}], the
    verdicts being (student first, teacher first)."""
    if not (len(rows) == len(student_answers) == len(teacher_answers)):
        raise DataError(f"pairwise judging: {len(rows)} inputs, {len(student_answers)} student answers and "
                        f"{len(teacher_answers)} teacher answers (must be equal)")
    if not rows:
        raise DataError("pairwise judging: no inputs to judge")
    outcomes, per_row, unparsable, same_pos = [], [], 0, 0
    with progress(desc, len(rows)) as bar:  # one step = one input, judged twice
        for row, s, t in zip(rows, student_answers, teacher_answers):
            instr, inp = _row(row, instruction)
            first = judge_pair(ask, instr, inp, s, t)  # student is A
            second = judge_pair(ask, instr, inp, t, s)  # student is B
            bar.advance()
            unparsable += (first is None) + (second is None)
            same_pos += first is not None and first == second
            out = "win" if (first, second) == ("A", "B") else "loss" if (first, second) == ("B", "A") else "tie"
            outcomes.append(out)
            per_row.append({"outcome": out, "verdicts": [first, second]})
    res = _tally(outcomes, n_boot, seed)
    res["unparsable"] = unparsable
    res["position_bias"] = round(same_pos / len(outcomes), 4)
    res["per_row"] = per_row
    return res


def _tally(outcomes: list[str], n_boot: int, seed: int) -> dict:
    """Counts and rates (bootstrap 95 % CIs over inputs) of win / tie / loss outcomes, plus
    `win_or_tie_rate` (the instruction eval's headline: the student is at least as good as the
    teacher) and `win_rate_tie_half`."""
    n = len(outcomes)
    res: dict = {"n": n}
    for key, name in (("win", "wins"), ("tie", "ties"), ("loss", "losses")):
        ind = [int(o == key) for o in outcomes]
        res[name] = sum(ind)
        res[f"{key}_rate"] = round(sum(ind) / n, 4)
        res[f"{key}_rate_ci"] = bootstrap_ci(ind, n_boot, seed)
    wot = [int(o != "loss") for o in outcomes]
    res["win_or_tie_rate"] = round(sum(wot) / n, 4)
    res["win_or_tie_rate_ci"] = bootstrap_ci(wot, n_boot, seed)
    half = [{"win": 1.0, "tie": 0.5, "loss": 0.0}[o] for o in outcomes]
    res["win_rate_tie_half"] = round(float(np.mean(half)), 4)
    res["win_rate_tie_half_ci"] = bootstrap_ci(half, n_boot, seed)
    return res


# ---------------------------------------------------------------- graded judge (one reply at a time)
GRADE_SYSTEM = "You check one reply at a time. Answer with a single word: yes or no."


def grade_messages(instruction: str, input: str, reply: str, style_guide: str | None = None) -> list[dict]:
    """The graded judge's chat messages: one yes/no question about one reply (module doc: why)."""
    style = f"Style guide: {' '.join(style_guide.split())}\n" if style_guide and style_guide.strip() else ""
    user = (f"Task: {instruction.strip()}\n{style}\nMessage: {input.strip()}\n\nReply: {reply.strip()}\n\n"
            "Does this reply answer the message helpfully and follow the task? Answer yes or no.")
    return [{"role": "system", "content": GRADE_SYSTEM}, {"role": "user", "content": user}]


_YES_NO = re.compile(r"^[\s*_`'\"(\[]*(?:(?:answer|verdict)\s*[:\-]?\s*[*_`'\"(\[]*)?(yes|no)(?![A-Za-z0-9])", re.I)


def parse_yes_no(text: str | None) -> bool | None:
    """True ("Yes", "yes.", "**Yes**", "Answer: yes"), False ("No."), None (anything else: a tie)."""
    m = _YES_NO.match(text or "")
    return None if m is None else m.group(1).lower() == "yes"


def grade(ask: Ask, rows: list, replies: list[str], *, instruction: str | None = None,
          style_guide: str | None = None, desc: str = "grading") -> list[bool | None]:
    """The judge's yes/no on each reply alone (None: unreadable). `rows` as in `compare`."""
    if len(rows) != len(replies):
        raise DataError(f"grading: {len(rows)} inputs and {len(replies)} replies (must be equal)")
    out: list[bool | None] = []
    with progress(desc, len(rows)) as bar:
        for row, reply in zip(rows, replies):
            instr, inp = _row(row, instruction)
            out.append(parse_yes_no(ask(grade_messages(instr, inp, reply, style_guide))))
            bar.advance()
    return out


def compare_grades(student: list[bool | None], teacher: list[bool | None], *, n_boot: int = 2000,
                   seed: int = 0) -> dict:
    """Student vs teacher from each input's two grades: yes vs no = win, no vs yes = loss, else a
    tie (an unreadable grade included). Same keys as `compare` but `position_bias` (no positions),
    plus `student_yes_rate` / `teacher_yes_rate`; `per_row` verdicts are (student, teacher)."""
    if len(student) != len(teacher):
        raise DataError(f"graded judging: {len(student)} student grades and {len(teacher)} teacher grades "
                        "(must be equal)")
    if not student:
        raise DataError("graded judging: no inputs to judge")
    outcomes = ["win" if (s, t) == (True, False) else "loss" if (s, t) == (False, True) else "tie"
                for s, t in zip(student, teacher)]
    res = _tally(outcomes, n_boot, seed)
    res["unparsable"] = sum(g is None for g in student) + sum(g is None for g in teacher)
    res["student_yes_rate"] = round(sum(g is True for g in student) / len(student), 4)
    res["teacher_yes_rate"] = round(sum(g is True for g in teacher) / len(teacher), 4)
    res["per_row"] = [{"outcome": o, "verdicts": [s, t]} for o, s, t in zip(outcomes, student, teacher)]
    return res


def endpoint_ask(endpoint: "Endpoint", *, max_tokens: int = 8, timeout: float = 120, max_retries: int = 4,
                 usage: dict | None = None) -> Ask:
    """An `ask` for an OpenAI-compatible endpoint (the teacher's): temperature 0, seed 0, a few tokens
    (the verdict is one letter or word). Requests go to the endpoint's first server. `usage`, when
    given, accumulates `calls`, `prompt` / `completion` tokens and `seconds` (the judge's cost)."""
    import time

    from openai import OpenAI

    client = OpenAI(base_url=endpoint.base_url, api_key=reveal(endpoint.api_key) or "-", timeout=timeout,
                    max_retries=max_retries)

    def ask(messages: list[dict]) -> str:
        t0 = time.time()
        r = client.chat.completions.create(model=endpoint.model, messages=messages, temperature=0,
                                           max_tokens=max_tokens, seed=0)
        if usage is not None:
            u = getattr(r, "usage", None)
            usage["calls"] = usage.get("calls", 0) + 1
            usage["prompt"] = usage.get("prompt", 0) + (getattr(u, "prompt_tokens", 0) or 0)
            usage["completion"] = usage.get("completion", 0) + (getattr(u, "completion_tokens", 0) or 0)
            usage["seconds"] = round(usage.get("seconds", 0.0) + time.time() - t0, 2)
        return (r.choices[0].message.content or "") if getattr(r, "choices", None) else ""

    return ask


# ---------------------------------------------------------------- reference-free checks
@dataclass(frozen=True)
class ReplyStyle:
    """Length bounds from the task's style guide, in words (e.g. "two to four short sentences"
    is roughly 10-80 words)."""

    min_words: int = 5
    max_words: int = 120

    @classmethod
    def from_guide(cls, text: str | None) -> "ReplyStyle":
        """Bounds read from a style guide's wording: "N to M words" / "N-M words" as written,
        "N to M (short) sentences" at 5-20 words a sentence, "at most / up to / under N words|sentences"
        for the upper bound only. Numbers as digits or words up to twenty. Nothing found: the defaults."""
        t = (text or "").lower()
        num = r"\b(\d+|" + "|".join(_NUMBERS) + r")\b"
        unit = r"(?:\s+(?:short|brief|plain|full))*\s+(words?|sentences?)\b"
        m = re.search(num + r"\s*(?:to|-|\u2013|or)\s*" + num + unit, t)
        if m:
            lo, hi, per = _number(m.group(1)), _number(m.group(2)), _per(m.group(3))
            return cls(min_words=lo * per[0], max_words=hi * per[1])
        m = re.search(r"(?:at\s+most|up\s+to|no\s+more\s+than|under|max(?:imum)?)\s+" + num + unit, t)
        if m:
            return cls(min_words=min(cls.min_words, _number(m.group(1)) * _per(m.group(2))[1]),
                       max_words=_number(m.group(1)) * _per(m.group(2))[1])
        return cls()


_NUMBERS = ["one", "two", "three", "four", "five", "six", "seven", "eight", "nine", "ten", "eleven", "twelve",
            "thirteen", "fourteen", "fifteen", "sixteen", "seventeen", "eighteen", "nineteen", "twenty"]


def _number(word: str) -> int:
    return int(word) if word.isdigit() else _NUMBERS.index(word) + 1


def _per(unit: str) -> tuple[int, int]:
    """(min, max) words per unit: a word is a word; a short sentence 5-20 words."""
    return (1, 1) if unit.startswith("word") else (5, 20)


_REFUSAL = re.compile(
    r"\b(?:i\s*(?:'m|am)\s+(?:sorry,?\s+but\s+i\s+)?(?:not\s+able|unable)\s+to\s+(?:help|assist|provide|do)"
    r"|i\s+(?:can(?:no|')t|can\s+not|won't|will\s+not)\s+(?:help|assist|provide|do\s+that|answer|comply)"
    r"|as\s+an?\s+(?:ai|language\s+model|large\s+language\s+model)\b"
    r"|i\s+don't\s+have\s+(?:access|the\s+ability))", re.I)
_SECRET = re.compile(
    r"\b(?:(?:full|long|whole|complete|16[- ]digit)\s+card\s+number|card\s+number|pin(?:\s+(?:code|number))?"
    r"|password|passcode|cvv2?|cvc|security\s+code|one[- ]time\s+(?:code|password|passcode)|otp"
    r"|verification\s+code|sms\s+code)\b", re.I)
# A request cue: the customer is asked to hand something over. "we will send you", "we can give
# you" (the bank giving) and "please keep" are not cues; "we need your" is.
_ASK = re.compile(
    r"\b(?:(?<!we )(?<!will )(?<!can )(?<!'ll )(?:provide|share|give|tell|send|confirm|reply\s+with|text)"
    r"(?!\s+you\b)|let\s+(?:me|us)\s+know|what\s+(?:is|are)|what's|need\s+(?:your|the))\b", re.I)
_NEGATION = re.compile(r"\b(?:never|not|don't|dont|do\s+not|no\s+one|nobody|won't|will\s+never|without)\b", re.I)
_LAST4 = re.compile(r"\blast\s+(?:four|4)\b|\bfirst\s+(?:six|6)\b", re.I)


def _asks_secret(text: str) -> bool:
    """A clause that names a secret after a request cue and with no negation before the secret
    ("please share your PIN" yes; "never share your PIN" no; "the last 4 digits of your card
    number" no: that is not the full number)."""
    for clause in re.split(r"[.!?;\n]+|,\s*(?:and|but)\s+", text):
        for m in _SECRET.finditer(clause):
            before = clause[: m.start()]
            if _ASK.search(before) and not _NEGATION.search(before) and not _LAST4.search(before):
                return True
    return False


def reply_checks(text: str, style: ReplyStyle | None = None) -> dict:
    """Checks on one reply that need no judge: `words`, `length_ok` (within the style's bounds),
    `refusal` ("I can't help", "as an AI", ...), `pii_ask` (asks for a card number, PIN, password,
    CVV or one-time code)."""
    style = style or ReplyStyle()
    words = len((text or "").split())
    return {"words": words, "length_ok": style.min_words <= words <= style.max_words,
            "refusal": bool(_REFUSAL.search(text or "")), "pii_ask": _asks_secret(text or "")}


def reply_check_rates(replies: dict[str, list[str]], style: ReplyStyle | None = None, n_boot: int = 2000,
                      seed: int = 0) -> dict:
    """Per model (name -> its replies): n, mean words, and the rate of `length_ok`, `refusal` and
    `pii_ask` with bootstrap 95 % CIs over replies."""
    out = {}
    for name, texts in replies.items():
        checks = [reply_checks(t, style) for t in texts]
        rec: dict = {"n": len(checks),
                     "mean_words": round(float(np.mean([c["words"] for c in checks])), 2) if checks else None}
        for key in ("length_ok", "refusal", "pii_ask"):
            ind = [int(c[key]) for c in checks]
            rec[key] = round(sum(ind) / len(ind), 4) if ind else None
            rec[f"{key}_ci"] = bootstrap_ci(ind, n_boot, seed) if ind else None
        out[name] = rec
    return out
