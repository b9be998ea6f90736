"""Pure functions that turn a model's reply text into a label, and make any text safe to store.

A reply can hold anything a server sends: Unicode digits ("١", "１"), dash-like minus
signs ("−1", "– 1", "﹣1"), lone surrogates, several answers, a reasoning model's thinking
("<think>...</think>") before its answer. The rules that keep labels honest: a minus sign of
any kind before 1 reads as -1 (unsure), never as 1; a reply that names two different choices
is malformed (no label), never one of them; and nothing written while thinking is ever read
as the answer (a reply that is all thinking has no answer).
"""

from __future__ import annotations

import re
import unicodedata

CHOICES = ("0", "1", "-1")
# The tags around a reasoning model's thinking (Qwen3 "thinking", DeepSeek-R1 and the like).
_THINK_TAG_RE = re.compile(r"(<\s*(?:/\s*)?think\s*>)", re.IGNORECASE)  # no nested \s*: linear time

# Minus-like characters outside Unicode's dash punctuation category (Pd): the mathematical
# minus and its super/subscript forms, heavy minus, modifier minus, and the two-em/three-em dashes.
_EXTRA_DASHES = frozenset("\u2212\u207b\u208b\u2796\u02d7\u2e3a\u2e3b\u00ad")


def _normalize_char(ch: str) -> str:
    if ch == "-" or ch in _EXTRA_DASHES or unicodedata.category(ch) == "Pd":
        return "-"
    if unicodedata.category(ch) == "Nd":  # any script's decimal digit -> ASCII
        return str(unicodedata.decimal(ch))
    return ch


def split_reasoning(text: str) -> tuple[str, str]:
    """Splits a reply into (reasoning, answer).

    Reasoning models think aloud before they answer, and what they write while thinking
    (candidate answers, "the answer is 0", "Video 1", numbers) is not their answer. So the
    reasoning is: the text inside each `<think>...</think>` block; the text after a `<think>`
    that is never closed (the model ran out of tokens while thinking: there is no answer);
    and the text before a `</think>` that has no opening tag (chat templates that open the
    block in the prompt, as Qwen3's thinking models do, so the reply starts inside it). The
    answer is the rest.

    Returns:
        (reasoning, answer), both stripped when `text` has think tags; ("", answer) is `text`
        unchanged when it has none. The answer is "" when the whole reply is reasoning.
    """
    if _THINK_TAG_RE.search(text) is None:
        return "", text
    reasoning: list[str] = []
    answer: list[str] = []
    inside = False
    for i, piece in enumerate(_THINK_TAG_RE.split(text)):
        if i % 2 == 0:  # text between tags
            (reasoning if inside else answer).append(piece)
        elif "/" not in piece:  # <think>
            inside = True
        elif inside:  # </think> closing a block
            inside = False
        else:  # </think> with no <think>: everything so far was reasoning
            reasoning.extend(answer)
            answer = []
    return "".join(reasoning).strip(), "".join(answer).strip()


def normalize_answer(text: str) -> str:
    """`text` with compatibility forms folded (NFKC: fullwidth, superscript digits), every
    decimal digit turned into ASCII and every dash-like sign into "-"."""
    folded = unicodedata.normalize("NFKC", text)
    return "".join(_normalize_char(ch) for ch in folded)


# "answer is 1", "Answer: -1", "answer - 1" (after normalisation every minus is "-").
_ANSWER_RE = re.compile(r"answer(?:\s+is)?[^\w\-]{0,6}(-\s*1|0|1)(?!\d|\.\d)", re.IGNORECASE)
# A standalone 0 / 1 / -1 that is not a clip's name ("Video 1" names the first clip, not answer 1).
# "-\s*1" comes first so that "- 1" is read whole (as unsure) and its "1" never on its own.
_TOKEN_RE = re.compile(r"(?<![\w.\-])(?<!video )(?<!clip )(-\s*1|0|1)(?!\d|\.\d)", re.IGNORECASE)
_STRIP = "\"'`*.[](){}<>:;!? \t\r\n"


def _value(token: str) -> int:
    return -1 if token.startswith("-") else int(token)


def parse_choice(text: str | None) -> int | None:
    """Reads a 0 / 1 / -1 answer out of a model reply.

    Exact answers ("1"), sentences ("The answer is 1."), quoted or formatted answers, any
    script's digits and any dash-like minus sign work. A minus sign of any kind before 1
    ("−1", "- 1", "–1") reads as -1. A reply naming two different choices ("0 or 1", "answer
    is 1 ... answer is 0") or none is malformed; the same choice twice is that choice. Only
    the answer after any reasoning is read (`split_reasoning`): "<think>... 0 ...</think>1"
    is 1, and a reply that is all reasoning is malformed.

    Returns:
        0, 1 or -1, or None if the reply is malformed.
    """
    if not isinstance(text, str):
        return None
    normalized = normalize_answer(split_reasoning(text)[1])
    stripped = normalized.strip(_STRIP)
    if re.fullmatch(r"-\s*1|0|1", stripped):
        return _value(stripped)
    explicit = {_value(t) for t in _ANSWER_RE.findall(normalized)}
    if explicit:
        return explicit.pop() if len(explicit) == 1 else None
    found = {_value(t) for t in _TOKEN_RE.findall(normalized)}
    return found.pop() if len(found) == 1 else None


def storable_text(value: object, *, max_chars: int | None = None) -> str:
    """`value` as text that any UTF-8 encoder (SQLite, JSON, HTTP) accepts.

    Lone surrogates and other unencodable code points become backslash escapes ("\\udc80");
    non-strings become their repr; text beyond `max_chars` is cut with a marker.
    """
    text = value if isinstance(value, str) else repr(value)
    if max_chars is not None and len(text) > max_chars:
        text = text[:max_chars] + f"...[{len(text) - max_chars} chars cut]"
    return text.encode("utf-8", "backslashreplace").decode("utf-8")
