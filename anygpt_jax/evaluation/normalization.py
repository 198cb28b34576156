"""Text normalization before scoring: COCO caption tokenization and Whisper's English rules.

`coco_tokenize` stands in for pycocoevalcap's PTBTokenizer (Stanford PTBTokenizer 3.4.1 run
through Java with `-preserveLines -lowerCase`, then its punctuation list removed) in pure
Python, so CIDEr/BLEU need no Java. It reproduces what that pipeline does to captions:
lower-casing; splitting clitics ('s 'm 'd 're 've 'll n't) and can|not, gon|na, wan|na,
got|ta; splitting , ; : ! ? ... $ % # @ and a sentence-final period off words while keeping
numbers (1,000 3.5 5:30), dotted abbreviations (u.s. p.m.) and common titles (mr. st.) whole;
dropping quotes, dashes and the removed punctuation; and, as the reference does (its list
names the upper-case forms only), keeping brackets as -lrb- -rrb- -lsb- -rsb- -lcb- -rcb-.
Known differences, all rare in captions: PTB's full abbreviation and special-word lists
(e.g. 'tis, y'all, rock'n'roll), an abbreviation ending a sentence (PTB adds a '.' token,
then removes it: same result except for words outside our abbreviation list), and Unicode
quote/dash variants beyond the common ones. tests/test_metrics.py checks the agreement
against the Java tokenizer where Java is installed.

`normalize_english` is OpenAI Whisper's English text normalizer (spelling, numbers, fillers,
punctuation), from the `whisper-normalizer` package (no torch, no tiktoken).
"""

from __future__ import annotations

import functools
import re

# pycocoevalcap's PTBTokenizer drops exactly these tokens after tokenizing.
PTB_REMOVED = frozenset(
    ["''", "'", "``", "`", "-LRB-", "-RRB-", "-LCB-", "-RCB-",
     ".", "?", "!", ",", ":", "-", "--", "...", ";"]
)  # fmt: skip
# Titles and short forms the PTB tokenizer keeps with their period inside a sentence.
_ABBREVIATIONS = frozenset(
    "mr mrs ms dr st jr sr vs etc inc ltd co corp mt prof gen rev sgt capt lt col ave blvd rd "
    "jan feb mar apr jun jul aug sep sept oct nov dec no".split()
)
_BRACKETS = {"(": "-lrb-", ")": "-rrb-", "[": "-lsb-", "]": "-rsb-", "{": "-lcb-", "}": "-rcb-"}
_SPLIT_WORDS = {"cannot": "can not", "gonna": "gon na", "wanna": "wan na", "gotta": "got ta"}
_QUOTES = str.maketrans({"\u2018": "'", "\u2019": "'", "\u201c": '"', "\u201d": '"',
                         "\u2013": "--", "\u2014": "--", "\u2026": "..."})  # fmt: skip
_CLITIC = re.compile(r"^(.*\w)(n't|'s|'m|'d|'re|'ve|'ll)$")
_NUMBER = re.compile(r"^[0-9]+([.,:/][0-9]+)*$")
_DOTTED = re.compile(r"^([a-z]\.){2,}$")  # u.s. p.m. a.m.


def _split_token(tok: str) -> list[str]:
    """One whitespace-separated, lower-cased chunk -> PTB-like tokens (before removal)."""
    if not tok:
        return []
    for ch, name in _BRACKETS.items():
        if ch in tok:
            left, _, right = tok.partition(ch)
            return _split_token(left) + [name] + _split_token(right)
    if '"' in tok:
        left, _, right = tok.partition('"')
        return _split_token(left) + ["''"] + _split_token(right)
    if "..." in tok:
        left, _, right = tok.partition("...")
        return _split_token(left) + ["..."] + _split_token(right)
    if tok in ("-", "--") or set(tok) == {"-"}:
        return ["--" if len(tok) > 1 else "-"]
    # Leading symbols and quotes come off one at a time.
    if tok[0] in "$#@`'" and len(tok) > 1:
        return [tok[0]] + _split_token(tok[1:])
    if tok[0] == "&" and len(tok) > 1:
        return ["&"] + _split_token(tok[1:])
    # Trailing punctuation, unless it belongs to a number, abbreviation or dotted form.
    if len(tok) > 1 and tok[-1] in ",;:!?%'`&":
        return _split_token(tok[:-1]) + [tok[-1]]
    if len(tok) > 1 and tok[-1] == "." and not (
        _DOTTED.match(tok) or tok[:-1] in _ABBREVIATIONS
    ):
        return _split_token(tok[:-1]) + ["."]
    # Internal commas/colons/semicolons split words but not numbers (1,000 5:30).
    if not _NUMBER.match(tok):
        m = re.search(r"[,;!?]", tok[1:])
        if m:
            at = m.start() + 1
            return _split_token(tok[:at]) + [tok[at]] + _split_token(tok[at + 1 :])
    if tok in _SPLIT_WORDS:
        return _SPLIT_WORDS[tok].split()
    m = _CLITIC.match(tok)
    if m:
        return _split_token(m.group(1)) + [m.group(2)]
    if tok.endswith("s'") and len(tok) > 2:  # plural possessive: dogs' -> dogs '
        return [tok[:-1], "'"]
    return [tok]


def coco_tokenize(text: str) -> str:
    """A caption as pycocoevalcap's PTBTokenizer leaves it: lower-case tokens joined by spaces."""
    text = text.translate(_QUOTES).lower()
    tokens = [t for chunk in text.split() for t in _split_token(chunk)]
    return " ".join(t for t in tokens if t not in PTB_REMOVED)


@functools.lru_cache(maxsize=1)
def _english_normalizer():
    try:
        from whisper_normalizer.english import EnglishTextNormalizer
    except ImportError as e:
        raise ImportError(
            "WER needs Whisper's English normalizer: pip install whisper-normalizer"
        ) from e
    return EnglishTextNormalizer()


def normalize_english(text: str) -> str:
    """Whisper's English normalization (lower case, spelled-out numbers as digits, no fillers)."""
    return _english_normalizer()(text)
