"""Row-level checks: is this generated row well-formed, and is its text a real user message?

Each check looks at one row and returns `None` (keep) or a short `detail` string that tells a
curator what was wrong with THIS row; the orchestrator pairs it with the check's reason name.
The checks are deliberately conservative: a small model's output is full of odd but legitimate
customer messages ("I cannot log in", "please please help"), and a false drop silently removes
diversity, so each pattern targets text a customer would not write.

Language id is a stopword vote over seven Latin-script languages plus a Unicode script check,
with no model file: the messages are short (5-30 words), the question is only "is this the
task's language", and a heavy detector would be slower than the rest of curation together.
A text with too few function words to decide is kept, not guessed.
"""
from __future__ import annotations

import json
import re
import unicodedata
from pathlib import Path
from typing import TYPE_CHECKING, Callable, Iterable

from curation.dedup import normalize, tokens
from heldout.formats import task_format

if TYPE_CHECKING:
    from distilforge.spec import TaskSpec

# ---------------------------------------------------------------- validators

REQUIRED = {"id": str, "label": str, "text": str, "prompt": list, "completion": list}


def generation_failed(row: dict) -> str | None:
    if row.get("status", "ok") != "ok":
        return (row.get("error") or "status " + str(row.get("status")))[:300]
    return None


def schema_problem(row: dict) -> str | None:
    """Required fields present and typed; the chat columns shaped the way the trainer reads them."""
    for name, typ in REQUIRED.items():
        if row.get(name) is None:
            return f"missing field '{name}'"
        if not isinstance(row[name], typ):
            return f"field '{name}' is {type(row[name]).__name__}, expected {typ.__name__}"
    if not row["text"].strip():
        return "empty text"
    comp = row["completion"]
    if len(comp) != 1 or not isinstance(comp[0], dict) or comp[0].get("role") != "assistant":
        return "completion must be one assistant message"
    if not isinstance(comp[0].get("content"), str) or not comp[0]["content"].strip():
        return "empty completion"
    if row["label"] and comp[0]["content"] != row["label"]:  # a labelled row's completion is its label
        return f"completion content {comp[0].get('content')!r} != label {row['label']!r}"
    if not row["prompt"] or not all(isinstance(m, dict) and {"role", "content"} <= set(m) for m in row["prompt"]):
        return "prompt must be a list of {role, content} messages"
    if row["prompt"][-1].get("role") != "user" or row["prompt"][-1].get("content") != row["text"]:
        return "prompt's last user message is not the row's text"
    if row.get("attributes"):
        try:
            json.loads(row["attributes"])
        except (TypeError, ValueError):
            return "attributes is not valid JSON"
    return None


def label_problem(row: dict, label_set: set[str]) -> str | None:
    return None if row["label"] in label_set else f"label {row['label']!r} is not one of the task's labels"


# ---------------------------------------------------------------- heuristics

def too_short(text: str, min_tokens: int, min_chars: int) -> str | None:
    n, c = len(tokens(text)), len(text.strip())
    if n < min_tokens or c < min_chars:
        return f"{n} tokens / {c} chars (min {min_tokens} tokens, {min_chars} chars)"
    return None


def too_long(text: str, max_tokens: int, max_chars: int) -> str | None:
    n, c = len(tokens(text)), len(text.strip())
    if n > max_tokens or c > max_chars:
        return f"{n} tokens / {c} chars (max {max_tokens} tokens, {max_chars} chars)"
    return None


def repetition_ratio(text: str) -> float:
    """Share of word bigrams that repeat an earlier bigram (0 = none, ->1 = a loop)."""
    toks = tokens(text)
    grams = list(zip(toks, toks[1:]))
    return 1 - len(set(grams)) / len(grams) if grams else 0.0


def repetition_problem(text: str, max_ratio: float, min_tokens: int = 6) -> str | None:
    if len(tokens(text)) < min_tokens:
        return None
    r = repetition_ratio(text)
    return f"repeated bigram ratio {r:.2f} > {max_ratio:.2f}" if r > max_ratio else None


_ALLOWED_FORMAT = {"\u200d", "\u200c", "\ufe0f"}  # emoji joiners / selectors are text, not noise


def non_printable_problem(text: str) -> str | None:
    for pos, ch in enumerate(text):
        if ch in "\t\n\r" or ch in _ALLOWED_FORMAT:
            continue
        if ch == "\ufffd" or unicodedata.category(ch) in ("Cc", "Cf", "Co", "Cs", "Cn"):
            return f"U+{ord(ch):04X} at position {pos}"
    return None


STOPWORDS = {
    "en": "the and is are was were my i you your it this that with for what how why when can do does did "
          "will would me have has been not please there from about just want need should could",
    "es": "el los las y es mi mis que por para con una del se está estoy tengo pero muy cuando dónde "
          "donde cómo qué hola gracias puedo quiero hace ya ha",
    "fr": "le les et est mon ma mes je vous pour pas une des du qui avec ce sur il nous bonjour merci "
          "comment pourquoi où j ai suis mais ne n c",
    "de": "der die das und ist mein meine ich nicht wie warum wo mit für auf ein eine zu habe hallo danke "
          "bitte kann noch wurde sie mir meiner",
    "it": "il lo gli è mio mia che per non come perché dove sono ho ciao grazie della questo ancora",
    "pt": "o os é meu minha que não como por para com uma eu você olá obrigado onde tenho ainda",
    "nl": "het een en is mijn ik niet hoe waarom waar met voor op van je hallo bedankt kan nog",
}
_STOP = {lang: set(words.split()) for lang, words in STOPWORDS.items()}


def _script(ch: str) -> str:
    try:
        return unicodedata.name(ch).split()[0]
    except ValueError:
        return "UNKNOWN"


def detect_language(text: str) -> tuple[str, int]:
    """(language code or script name or 'unknown', evidence count).

    Non-Latin script letters in the majority -> the script ('cyrillic', 'cjk', ...). Otherwise
    the language whose function words occur most, when it has at least two; ties go to English.
    """
    letters = [ch for ch in unicodedata.normalize("NFKC", text) if ch.isalpha()]
    if letters:
        scripts: dict[str, int] = {}
        for ch in letters:
            s = _script(ch)
            scripts[s] = scripts.get(s, 0) + 1
        top, count = max(scripts.items(), key=lambda kv: kv[1])
        if top != "LATIN" and count / len(letters) >= 0.5:
            return top.lower(), count
    toks = unicodedata.normalize("NFKC", text).casefold().replace("’", "'")
    words = re.findall(r"\w+", toks)
    hits = {lang: sum(w in stop for w in words) for lang, stop in _STOP.items()}
    best = max(hits, key=lambda lang: (hits[lang], lang == "en"))
    if hits[best] < 2:
        return "unknown", hits[best]
    return best, hits[best]


def language_problem(text: str, want: str) -> str | None:
    lang, evidence = detect_language(text)
    if lang in ("unknown", want):
        return None
    return f"detected {lang} ({evidence} cues), expected {want}"


def _rx(*patterns: str) -> re.Pattern:
    return re.compile("|".join(f"(?:{p})" for p in patterns), re.IGNORECASE | re.MULTILINE)


# "I can't" / "I'm unable to" as the teacher says it when it refuses. A customer says "I can't"
# too ("Sorry, I can't find my card"), so each pattern pairs it with what only a refusal says:
# help/assist *with that*, comply with *a request*, produce *content*, or a bare "Sorry, I can't
# help." that ends there ("can't help but notice", a customer's idiom, goes on and is kept).
_I_CANT = (r"\bi (?:can'?t|cannot|can not|won'?t be able to|will not be able to)"
           r"|\bi(?:'m| am) (?:unable|not able) to")
REFUSAL = _rx(
    r"\bas an? (?:ai|a\.i\.|artificial intelligence|(?:ai |large )?language model|llm|ai assistant)\b",
    r"\bi(?:'m| am) (?:just |only )?(?:an? )?(?:ai|language model|large language model|virtual assistant|chatbot)\b",
    # "I can't assist with that", "I'm unable to help you with this request", "... with creating ..."
    rf"(?:{_I_CANT}) (?:help|assist)(?: you)? with (?:that|this|your|such|the request|requests?|creating|"
    rf"generating|writing|providing|producing)\b",
    # "I can't assist you", "I cannot comply with this request", "I can't fulfill that request"
    rf"(?:{_I_CANT}) (?:help|assist) you\b",
    rf"(?:{_I_CANT}) (?:assist|comply|fulfil+|accommodate|honou?r)(?: with)? (?:that|this|your|such)(?: kind of)? requests?\b",
    # "I'm sorry, but I can't generate that content", "I cannot provide such material"
    rf"(?:{_I_CANT}) (?:provide|generate|create|write|produce) (?:(?:that|this|such|any|the requested|an?|the) )?"
    rf"(?:(?:kind|type|sort) of )?(?:content|response|material|assistance|example|sample)s?\b",
    # opened with an apology and then "I can't assist." / "I can't help…" with nothing a customer adds
    rf"^\W*(?:(?:i'?m |i am )?sorry|i apologi[sz]e|unfortunately|i'?m afraid)\b[^.!?\n]{{0,30}}?(?:{_I_CANT}) "
    rf"(?:help|assist)\s*(?:[.!…]|$)",
    r"\b(?:my|the) (?:guidelines|programming|content policy) (?:does not|doesn'?t|do not|don'?t) allow",
)
META = _rx(
    r"^\s*(?:sure|certainly|of course|okay|ok|absolutely|great)\b[!,.:]*\s+(?:here|i'?ll|i will|this)\b",
    r"^\s*here(?:'s| is| are) (?:(?:a|an|the|one|some|my|your)\s+)?(?:\w+\s+){0,2}(?:message|example|query|request|sample|version|text|variation)s?\b",
    r"\b(?:example|sample|generated|synthetic) (?:message|query|input|text|request)s?\b",
    r"\b(?:customer|user) (?:message|query|input|request)\s*:",
    r"^\s*(?:message|text|input|query|output|answer|response)\s*:",
    r"\b(?:intent|label|category)\s*[:=]",
    r"\bthis (?:message|query|request|text) (?:is|expresses|shows|asks|falls|belongs|would)\b",
    r"^\s*\(?note\s*:",
    r'```|<\|im_|^#{2,}|"message"\s*:|^\s*\{',
)


# Written as the bank's agent (or the task description) instead of as the customer: seen in real
# teacher output ("Hello! How can I assist you today?", "Dear [Customer Name], ...").
WRONG_VOICE = _rx(
    r"\bhow (?:can|may|could) i (?:help|assist) you\b",
    r"\bi'?m here to (?:help|assist)\b|\bi am here to (?:help|assist)\b",
    r"\b(?:is there )?anything else i can (?:help|assist|do for you)\b",
    r"\bthank(?:s| you) for (?:contacting|reaching out|your (?:message|patience|inquiry))\b",
    r"\bdear (?:valued )?customer\b",
    r"\[(?:customer|client|user|your|recipient|bank|agent)[^\]]{0,30}\]",
    r"\bthe (?:customer|user|client)(?:'s)?\b(?! service| support| care| number| id\b| account number)",
)


def wrong_voice_problem(text: str) -> str | None:
    m = WRONG_VOICE.search(text.replace("’", "'"))
    return f"written as the agent or the task, not the customer: matched {m.group(0)!r}" if m else None


def refusal_problem(text: str) -> str | None:
    m = REFUSAL.search(text.replace("’", "'"))
    return f"matched {m.group(0)!r}" if m else None


def meta_problem(text: str) -> str | None:
    m = META.search(text.replace("’", "'"))
    return f"matched {m.group(0).strip()!r}" if m else None


# ---------------------------------------------------------------- prompt echo and label leak

_JINJA = re.compile(r"\{\{.*?\}\}|\{%.*?%\}|\{#.*?#\}", re.DOTALL)
PROMPTS_DIR = Path(__file__).with_name("prompts")


def echo_sources(spec: TaskSpec, extra: Iterable[str] = (), descriptions: bool = False) -> list[tuple[str, str]]:
    """(name, text) pieces the teacher saw and must not repeat: the task instruction and the static
    text of the generation prompt templates (variables cut out, so no n-gram spans a placeholder).

    Label descriptions only on request: they describe what customers say, so a genuine message
    shares long runs with them ("charged a fee for withdrawing cash at an ATM"); the description
    copies that matter are in the third person and caught as `wrong_voice`."""
    out = [("instruction", spec.instruction)]
    if descriptions:
        out += [(f"description of {name}", d) for name, d in task_format(spec).label_descriptions().items()]
    if PROMPTS_DIR.is_dir():
        for p in sorted(PROMPTS_DIR.iterdir()):
            if p.suffix in (".jinja2", ".txt"):
                out += [(f"prompt template {p.name}", seg) for seg in _JINJA.split(p.read_text())]
    out += [("extra", s) for s in extra]
    return out


class EchoIndex:
    """n-grams of the prompt pieces -> which piece they came from."""

    def __init__(self, sources: list[tuple[str, str]], n: int):
        self.n = n
        self.grams: dict[tuple[str, ...], str] = {}
        for name, text in sources:
            toks = tokens(text)
            for j in range(len(toks) - n + 1):
                self.grams.setdefault(tuple(toks[j : j + n]), name)

    def problem(self, text: str) -> str | None:
        toks = tokens(text)
        for j in range(len(toks) - self.n + 1):
            src = self.grams.get(tuple(toks[j : j + self.n]))
            if src:
                return f"repeats {self.n} words of the {src}"
        return None


def label_leak_patterns(label_names: Iterable[str], spaced: bool) -> list[tuple[str, re.Pattern]]:
    """Label names as a model would print them: identifiers with `_`/`-` or inner capitals.

    A plain-word label ("balance") is an ordinary word in a message and is not flagged; the
    spaced form of a multi-word label ("card arrival") only when `spaced` is on, since customers
    write such phrases naturally ("report a lost or stolen card").
    """
    out = []
    for name in label_names:
        forms = []
        if re.search(r"[_-]|[a-z][A-Z]", name):
            forms.append(re.escape(name))
        words = re.sub(r"([a-z])([A-Z])", r"\1 \2", name).replace("_", " ").replace("-", " ").split()
        if spaced and len(words) >= 2:
            forms.append(r"\s+".join(map(re.escape, words)))
        if forms:
            out.append((name, re.compile(rf"(?<![A-Za-z0-9])(?:{'|'.join(forms)})(?![A-Za-z0-9])", re.IGNORECASE)))
    return out


def label_leak_problem(text: str, patterns: list[tuple[str, re.Pattern]]) -> str | None:
    for name, rx in patterns:
        if rx.search(text):
            return f"text names the label '{name}'"
    return None


# ---------------------------------------------------------------- the list the orchestrator runs

Check = tuple[str, Callable[[dict], str | None]]


def heuristic_checks(spec: TaskSpec) -> list[Check]:
    """(reason, row -> detail|None) for every heuristic switched on in `spec.curation`, in order."""
    cfg = spec.curation
    checks: list[Check] = []
    checks.append(("too_short", lambda r: too_short(r["text"], cfg.filters.min_tokens, cfg.filters.min_chars)))
    checks.append(("too_long", lambda r: too_long(r["text"], cfg.filters.max_tokens, cfg.filters.max_chars)))
    if cfg.filters.drop_non_printable:
        checks.append(("non_printable", lambda r: non_printable_problem(r["text"])))
    if cfg.filters.max_repetition is not None:
        checks.append(("repetitive", lambda r: repetition_problem(r["text"], cfg.filters.max_repetition)))
    if cfg.filters.language:
        checks.append(("wrong_language", lambda r: language_problem(r["text"], cfg.filters.language)))
    if cfg.filters.drop_refusals:
        checks.append(("refusal", lambda r: refusal_problem(r["text"])))
    if cfg.filters.drop_meta_commentary:
        checks.append(("meta_commentary", lambda r: meta_problem(r["text"])))
    if cfg.filters.prompt_echo_ngram:
        echo = EchoIndex(echo_sources(spec, descriptions=cfg.filters.prompt_echo_descriptions), cfg.filters.prompt_echo_ngram)
        checks.append(("prompt_echo", lambda r: echo.problem(r["text"])))
    if cfg.filters.drop_wrong_voice:
        checks.append(("wrong_voice", lambda r: wrong_voice_problem(r["text"])))
    if spec.label_names and cfg.filters.label_leak:
        pats = label_leak_patterns(spec.label_names, cfg.filters.label_leak_spaced)
        checks.append(("label_leak", lambda r: label_leak_problem(r["text"], pats)))
    return checks + task_format(spec).row_checks(cfg.filters)  # what only this task type checks


__all__ = [
    "detect_language", "echo_sources", "generation_failed", "heuristic_checks", "label_problem",
    "normalize", "repetition_ratio", "schema_problem",
]
