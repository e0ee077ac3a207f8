"""Answer extraction and exact comparison, safe on any input string.

Rules (documented once, used by every task):
- The answer lives after the last "</think>"; with no think block, the whole text is the answer region. A
  "<think>" that never closes means the model has not answered yet: no answer.
- In that region the first rule that finds something wins: the last "\\boxed{...}" (balanced braces), else the
  line after the last "####", else the line after the last "answer is" ("The answer is X."), else the last number.
- Numbers compare as exact rationals (fractions.Fraction): "12,345" == "12345" == "+12345", "0.5" == "1/2".
  Unicode decimal digits (full-width, Arabic-Indic, ...) count as their ASCII digits; NaN, inf, exponents and
  anything longer than MAX_NUMBER_CHARS are not numbers.
"""

from __future__ import annotations

import re
import unicodedata
from fractions import Fraction

MAX_NUMBER_CHARS = 1000  # longest text parsed as a number: keeps int() and Fraction() cheap on hostile input
MAX_ANSWER_CHARS = 10_000  # a longer extracted answer is rejected outright rather than normalised

# A number inside text: optional sign, digits with valid thousands commas, optional decimals, optional "/den".
# Every alternative either matches or fails after O(1) backtracking, so scanning stays linear on hostile input.
_NUMBER = re.compile(r"[-+\u2212\uff0b\uff0d]?(?:(?:\d{1,3}(?:,\d{3})+|\d+)(?:\.\d+)?|\.\d+)(?:/\d+)?")
_FRAC = re.compile(r"([-+]?)\\[dt]?frac\{([-+]?\d+)\}\{(\d+)\}")
_ANSWER_IS = re.compile(r"answer\s+is\b\s*:?", re.IGNORECASE)
_SENTENCE_END = re.compile(r"\.\s")
_THINK, _END_THINK = "<think>", "</think>"

# Signs and operators written with other code points; full-width ASCII (U+FF01..U+FF5E) is mapped separately.
_SYMBOLS = {"\u2212": "-", "\u2013": "-", "\u00d7": "*", "\u00f7": "/", "\u2215": "/"}


def normalise_digits(text: str) -> str:
    """ASCII digits for every Unicode decimal digit, ASCII for full-width forms and look-alike signs."""
    if text.isascii():
        return text
    out = []
    for ch in text:
        digit = unicodedata.decimal(ch, None)
        if digit is not None:
            out.append(str(digit))
        elif "\uff01" <= ch <= "\uff5e":
            out.append(chr(ord(ch) - 0xFEE0))
        else:
            out.append(_SYMBOLS.get(ch, ch))
    return "".join(out)


def _to_fraction(token: str) -> Fraction | None:
    """A token matched by _NUMBER as an exact value (None for a zero denominator)."""
    token = token.replace(",", "")
    numerator, _, denominator = token.partition("/")
    value = Fraction(numerator)
    if not denominator:
        return value
    den = int(denominator)
    return value / den if den else None


def parse_number(text: str) -> Fraction | None:
    """The exact value of a text that is one number ("-1,234.5", "3/4", "\\frac{3}{4}", "$18"), else None."""
    if not isinstance(text, str) or len(text) > MAX_NUMBER_CHARS:
        return None
    text = normalise_digits(text).strip().rstrip(".").strip()
    if text.startswith("$"):  # currency, as GSM8K completions often write it
        text = text[1:].strip()
    if _NUMBER.fullmatch(text):
        return _to_fraction(text)
    frac = _FRAC.fullmatch(text)
    if frac:
        sign, num, den = frac.groups()
        value = _to_fraction(f"{num}/{den}")
        return -value if value is not None and sign == "-" else value
    return None


def first_number(text: str) -> Fraction | None:
    """The value of the first number in a text ("72 apples" -> 72), for answers with words around them."""
    if not isinstance(text, str) or len(text) > MAX_ANSWER_CHARS:
        return None
    text = normalise_digits(text)
    match = _NUMBER.search(text)
    if match is None or text[match.end() : match.end() + 1].isdigit():  # "12,3450" is no number, not 12345
        return None
    return parse_number(match.group())


def numbers_match(predicted: str | None, gold: str, lenient: bool = True) -> bool:
    """Whether a predicted answer text has the gold value. lenient: the first number in the text counts."""
    if predicted is None or len(predicted) > MAX_ANSWER_CHARS:
        return False
    gold_value = parse_number(gold)
    if gold_value is None:
        return normalise_text(predicted) == normalise_text(gold)
    value = parse_number(predicted)
    if value is None and lenient:
        value = first_number(predicted)
    return value == gold_value


_LATEX_NOISE = ("\\!", "\\,", "\\;", "\\left", "\\right", "^\\circ", "^{\\circ}", "\\%", "%", "$", " ")


def normalise_text(text: str) -> str:
    """A comparison form for non-numeric answers: digits normalised, LaTeX spacing/sizing noise removed."""
    text = normalise_digits(text).strip().rstrip(".")
    text = re.sub(r"\\text\{([^{}]*)\}", r"\1", text)
    text = text.replace("\\dfrac", "\\frac").replace("\\tfrac", "\\frac")
    for noise in _LATEX_NOISE:
        text = text.replace(noise, "")
    return "".join(text.split()).casefold()


# ---------------------------------------------------------------------------------------------------------------
# extraction


def _answer_region(completion: str) -> str | None:
    end = completion.rfind(_END_THINK)
    if end >= 0:
        return completion[end + len(_END_THINK) :]
    return None if _THINK in completion else completion


def _clean(text: str) -> str:
    """Drop markdown bold/code, dollar signs and the sentence's full stop around an answer."""
    return text.lstrip(" \t\r\n*`$").rstrip(" \t\r\n*`$.")


def _first_line(text: str) -> str:
    return text.lstrip().partition("\n")[0]


def last_boxed(text: str) -> str | None:
    """The content of the last "\\boxed{...}" (balanced braces), or None."""
    start = text.rfind("\\boxed{")
    if start < 0:
        return None
    depth, begin = 1, start + len("\\boxed{")
    for i in range(begin, min(len(text), begin + MAX_ANSWER_CHARS)):
        if text[i] == "{":
            depth += 1
        elif text[i] == "}":
            depth -= 1
            if depth == 0:
                return text[begin:i].strip()
    return None  # unbalanced (or absurdly long): not an answer


def _after_hashes(text: str) -> str | None:
    start = text.rfind("####")
    return _clean(_first_line(text[start + 4 :])) if start >= 0 else None


def _last_match(pattern: re.Pattern[str], text: str) -> re.Match[str] | None:
    match = None
    for match in pattern.finditer(text):  # noqa: B007 - only the last one is wanted
        pass
    return match


def _after_answer_is(text: str) -> str | None:
    last = _last_match(_ANSWER_IS, text)
    if last is None:
        return None
    line = _first_line(text[last.end() :])
    return _clean(_SENTENCE_END.split(line, maxsplit=1)[0])


def _last_number(text: str) -> str | None:
    last = _last_match(_NUMBER, text)
    return last.group() if last else None


def extract_answer(completion: str) -> str | None:
    """The final answer text of a completion, by the rules in this module's docstring; None if there is none."""
    if not isinstance(completion, str):
        return None
    region = _answer_region(completion)
    if region is None:
        return None
    for rule in (last_boxed, _after_hashes, _after_answer_is, _last_number):
        found = rule(region)
        if found:
            return found
    return None


def format_ok(completion: str) -> bool:
    """R1's response format: one "<think>...</think>" block at the start (after optional whitespace), then an
    answer that is not empty."""
    if not isinstance(completion, str):
        return False
    text = completion.lstrip()
    if not text.startswith(_THINK) or text.count(_THINK) != 1 or text.count(_END_THINK) != 1:
        return False
    return bool(text.partition(_END_THINK)[2].strip())
