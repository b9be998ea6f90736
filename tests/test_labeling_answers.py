"""Table-driven tests of reading a label out of a model's reply, and of text that must survive storage."""

import sqlite3

import pytest

from plare_jax.labeling import parse_choice  # the one the labeler uses
from plare_jax.labeling.answers import normalize_answer, split_reasoning, storable_text
from plare_jax.testing.loopback_server import UNICODE_SPELLINGS

DASHES = ["\u2212", "\u2012", "\u2013", "\u2014", "\u2015", "\ufe63", "\uff0d", "\u2010", "\u2011", "\u207b", "\u2796", "\ufe58"]


@pytest.mark.parametrize(
    "text, expected",
    [
        # plain ASCII answers, quoted or formatted
        ("1", 1), ("0", 0), ("-1", -1), (" '0'\n", 0), ('"1"', 1), ("`-1`", -1), ("**1**", 1), ("[0]", 0),
        ("1.", 1), ("Answer: 0", 0), ("Answer: 1", 1), ("Answer: -1", -1), ("answer:-1", -1),
        ("The answer is 1.", 1), ("The answer is -1 since", -1), ("Video 2 is better, so 1", 1),
        # any minus-like sign before 1 is unsure, with or without a space
        ("- 1", -1), ("-  1", -1), ("\u22121", -1), ("\u2212 1", -1), ("Answer: \u2212 1", -1),
        ("The answer is \u2013 1.", -1), ("\uff0d\uff11", -1), ("\u207b\u00b9", -1),
        # other scripts' digits and compatibility forms
        ("\u0661", 1), ("\u0660", 0), ("\uff11", 1), ("\uff10", 0), ("\U0001d7cf", 1), ("\u0967", 1), ("\u00b9", 1),
        ("\u2212\u0661", -1), ("Answer: \u0661", 1),
        # two different choices: malformed; the same choice twice: that choice
        ("either 0 or 1", None), ("0 or 1", None), ("1 or -1", None), ("-1 or 0", None), ("0 - 1", None),
        ("The answer is 1. No, the answer is 0.", None), ("Answer: 1\nAnswer: -1", None),
        ("1\n\nAnswer: 1", 1), ("-1\n\nAnswer: -1", -1), ("0 ... 0", 0), ("\u2212 1 and - 1", -1),
        # clip names and other numbers are not answers
        ("Video 1 is better", None), ("no idea", None), ("10", None), ("0.5", None), ("2", None), ("-0", None),
        # nothing to read
        ("", None), ("   ", None), (None, None), (1, None), (["1"], None),
        # escaped lone surrogates after the answer (as stored) do not hide it
        ("0\\udc80", 0), ("1\\udc80", 1), ("-1\\udc80", -1),
        # a reasoning model's thinking is never the answer: only what follows it is read
        ("<think>The answer is 0.</think>1", 1), ("<think>\n0 or 1? -1?\n</think>\n\nAnswer: -1", -1),
        ("<think>Video 1 looks better: 0</think> The answer is 1.", 1), ("The answer is 1.</think>0", 0),
        ("<think>The answer is 0.", None), ("<think>The answer is 0.</think>", None), ("</think>", None),
        ("<think>a</think>0<think>1</think>", 0), ("<THINK>1</Think>0", 0),
    ],
)  # fmt: skip
def test_parse_choice(text, expected):
    assert parse_choice(text) == expected


@pytest.mark.parametrize("dash", DASHES)
@pytest.mark.parametrize("space", ["", " "])
def test_every_dash_like_sign_before_one_reads_as_unsure(dash, space):
    assert parse_choice(f"{dash}{space}1") == -1
    assert parse_choice(f"The answer is {dash}{space}1.") == -1


@pytest.mark.parametrize("choice", ["0", "1", "-1"])
def test_loopback_unicode_spellings_read_as_intended(choice):
    # the fuzz server's odd spellings must each mean what the server intends
    for spelling in UNICODE_SPELLINGS[choice]:
        assert parse_choice(spelling) == int(choice), spelling


def test_normalize_answer_folds_digits_and_dashes():
    assert normalize_answer("\u2212\u0661 \uff0d\uff11 \u2013 \U0001d7ce") == "-1 -1 - 0"


def test_storable_text_survives_sqlite_and_utf8(tmp_path):
    text = storable_text("0\udc80 and \ud800")
    assert text == "0\\udc80 and \\ud800"
    text.encode("utf-8")  # would raise UnicodeEncodeError on a lone surrogate
    with sqlite3.connect(tmp_path / "t.sqlite") as conn:
        conn.execute("CREATE TABLE t (x TEXT)")
        conn.execute("INSERT INTO t VALUES (?)", (text,))
    assert storable_text("x" * 50, max_chars=10).startswith("x" * 10 + "...[40 chars cut]")
    assert storable_text(None) == "None"


@pytest.mark.parametrize(
    "text, reasoning, answer",
    [
        ("1", "", "1"),  # no think tags: the text as it is
        ("  The answer is 1. ", "", "  The answer is 1. "),
        ("<think>\nhmm, 0?\n</think>\n\n1", "hmm, 0?", "1"),
        ("<think>hmm</think>", "hmm", ""),
        ("<think>hmm, 0? still thinking", "hmm, 0? still thinking", ""),  # unterminated: no answer
        ("hmm, 0?</think>1", "hmm, 0?", "1"),  # the chat template opened the block
        ("<think>a</think>1<think>b</think>", "ab", "1"),
        ("< think >a</ think >1", "a", "1"),
        ("<think>a<think>b</think>c</think>1", "abc", "1"),  # nested: all of it is thinking
    ],
)  # fmt: skip
def test_split_reasoning(text, reasoning, answer):
    assert split_reasoning(text) == (reasoning, answer)


def test_split_reasoning_is_linear_on_hostile_text():
    # runs of "<" and spaces that almost make a tag: no backtracking (quadratic would take minutes here)
    for text in ("<" + " " * 200_000, "< / " * 50_000, "<" * 200_000 + "think"):
        assert split_reasoning(text)[0] == ""
