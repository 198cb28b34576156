"""Text normalization before scoring: COCO caption tokenization and Whisper's English rules.

`coco_tokenize` is pycocoevalcap's caption tokenization (Stanford PTBTokenizer 3.4.1 run through
Java with `-preserveLines -lowerCase`, then its punctuation list removed) in pure Python, so
CIDEr/BLEU need no Java. Like the JFlex lexer it reproduces, it takes the longest token of any
class at each point (trailing context counting towards the length, ties to the earlier class).
tests/test_metrics.py checks it against the Java tokenizer. A caption is read as Java reads one
inside pycocoevalcap's batch, followed by a newline. Known differences, none in ordinary
captions:
- Java reads on into the batch. The batch's last caption ends the file, so a final ":)", "'99"
  or "123.jpg" splits there. A caption ending in a single letter and a period ("vitamin C.")
  loses the period when the next caption starts with "The", "A", "He" and the like; one ending
  in "No.", "fig.", "art." (ca. op. prop. bldg.) keeps it when the next one starts with a digit.
- A line break other than "\\n" in a caption puts pycocoevalcap's batch out of step; here it is
  a space.
- Letters that Unicode added after the lexer was built (2014).

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

# --- Token classes of the PTB lexer (Stanford CoreNLP 3.4.1, default options). The lexer is
# case-insensitive for literal text but not for character classes, hence the (?i:...) groups.
_SPACE = " \t\u00a0\u2000-\u200a\u3000"
_SPACENL = rf"(?:[{_SPACE}]|\r\n|[\n\r\u2028\u2029\x0b\x0c\x85])"
_APOS = r"(?:['\u0092\u2019]|(?i:&apos;))"
_APOSX = r"(?:['`\u0091\u0092\u2018\u2019\u201b]|(?i:&apos;))"  # also seen inside words
_REDAUX = rf"{_APOS}(?:[msdMSD]|(?i:re|ve|ll))"
_SREDAUX = rf"(?i:n){_APOSX}(?i:t)"
_INSENTP = r"[,;:\u3001]"
_ACRO_SPECIAL = r"(?i:canada|sino|korean|eu|japan|non)-(?i:u\.s)|(?i:u\.s\.-(?:u\.k|u\.s\.s\.r))"
_HTHING = (
    r"[A-Za-z0-9][A-Za-z0-9.,\u00ad]*"
    rf"(?:-(?:(?:[A-Za-z](?:\.[A-Za-z])+|{_ACRO_SPECIAL})\.|[A-Za-z0-9\u00ad]+))+"
)
_THINGA = r"[A-Z]+(?:(?:[+&]|(?i:&amp;))[A-Z]+)+"
_URLCH = r"[^ \t\n\f\r\"<>|(){}"  # an unterminated class, closed by each user
# Abbreviations that keep their period. ABBREV1 (states, months, companies, ...) usually come
# before a lower-case word; (?-i:..) letters are matched case-sensitively ("Pa." but "pa .").
_ABBREV1 = (
    "Jan|Feb|Mar|Apr|Jun|Jul|Aug|Sep|Sept|Oct|Nov|Dec|Mon|Tue|Tues|Wed|Thu|Thurs|Fri"
    "|Ala|Ariz|(?-i:A)z|(?-i:A)rk|Calif|Colo|Conn|Ct|Dak|(?-i:D)el|Fla|Ga|(?-i:I)ll|Ind|Kans?"
    "|Ky|(?-i:L)a|(?-i:M)ass|Md|Mich|Minn|(?-i:M)iss|Mo|Mont|Neb|Nev|Okla|(?-i:O)re|(?-i:P)a"
    "|Penn|Tenn|(?-i:T)ex|Va|Vt|(?-i:W)ash|Wisc?|Wyo"
    "|Inc|Cos?|Corp|Pp?t(?-i:[ye])s?|Ltd|Plc|Rt|Bancorp|Bhd|Assn|Univ|Intl|Sys|tel|est|ext|sq"
    "|Jr|Sr|Bros|(?:Ed|Ph)\\.D|Blvd|Rd|Esq|etc|al|seq|Bldg"
)
# ABBREV2: titles and acronyms, usually before a capitalized word; any single letter counts.
_ABBREV2 = (
    "Mr|Mrs|Ms|(?-i:M)iss|Drs?|Profs?|Sens?|Reps?|Attys?|Lt|Col|Gen|Messrs|Govs?|Adm|Rev|Maj|Sgt"
    "|Cpl|Pvt|Capt|Ste?|Ave|Pres|Lieut|Hon|Brig|Co?mdr|Pfc|Spc|Supts?|Det|Mt|Ft|Adj|Adv|Asst"
    "|Assoc|Ens|Insp|Mlle|Mme|Msgr|Sfc|vs|Alex|Wm|Jos|Cie|a\\.k\\.a|cf|TREAS|Ph"
    "|Invt|Elec|Natl|M(?-i:[ft])g|Dept"
)
# After an acronym, these words (first letter as written) make its period also end a sentence.
_SENTENCE_STARTS = (
    "About According Additionally After An A As At But Earlier He Her Here However If In It Last "
    "Many More Mr. Ms. Now Once One Other Our She Since So Some Such That The Their Then There "
    "These They This We When While What Yet You"
).split()
_FILE_EXTENSIONS = (
    "bat|bmp|c|class|cgi|cpp|dll|doc|docx|exe|gif|gz|h|htm|html|jar|java|jpeg|jpg|mov|mp3|pdf"
    "|php|pl|png|ppt|ps|py|sql|tar|txt|wav|x|xml|zip"
)
_MISC_SYMBOLS = (
    "+%&~^|\\\\\u00a6-\u00a9\u00ac\u00ae-\u00ba\u00d7\u00f7\u0387\u05be\u05c0\u05c3\u05c6"
    "\u05f3\u05f4\u0600-\u0603\u0606-\u060a\u060c\u0614\u061b\u061e\u066a\u066d\u0703-\u070d"
    "\u07f6-\u07f8\u0964\u0965\u0e4f\u1fbd\u2016\u2017\u2020-\u2023\u2030-\u2038\u203b"
    "\u203e-\u2042\u2044\u207a-\u207f\u208a-\u208e\u2100-\u214f\u2190-\u2bff\u3012\u30fb"
    "\uff01-\uff0f\uff1a-\uff20\uff3b-\uff40\uff5b-\uff65"
)
# Marks (accents, vowel signs, soft hyphen) the lexer's words also take as letters.
_EXTRA_LETTERS = (
    "\u00ad\u0237-\u024f\u02c2-\u02c5\u02d2-\u02df\u02e5-\u02ff\u0300-\u037d\u0384\u0385"
    "\u03cf\u03f6\u03fc-\u03ff\u0483-\u0487\u04cf\u04f6-\u04ff\u0510-\u0525\u055a-\u055f"
    "\u0591-\u05bd\u05bf\u05c1\u05c2\u05c4\u05c5\u05c7\u0615-\u061a\u063b-\u063f"
    "\u064b-\u065e\u0670\u06d6-\u06ef\u06fa-\u06ff\u070f\u0711\u0730-\u077f\u07a6-\u07b1"
    "\u07ca-\u07f5\u07fa\u0900-\u0903\u093c\u093e-\u094e\u0951-\u0955\u0962\u0963"
    "\u0981-\u0983\u09bc-\u09c4\u09c7\u09c8\u09cb-\u09cd\u09d7\u09e2\u09e3\u0a01-\u0a03"
    "\u0a3c\u0a3e-\u0a4f\u0a81-\u0a83\u0abc-\u0acf\u0b82\u0bbe-\u0bc2\u0bc6-\u0bc8"
    "\u0bca-\u0bcd\u0c01-\u0c03\u0c3e-\u0c56\u0d3e-\u0d44\u0d46-\u0d48\u0e30-\u0e3a"
    "\u0e47-\u0e4e\u0eb1-\u0ebc\u0ec8-\u0ecd"
)
_BRACKETS = {"(": "-LRB-", ")": "-RRB-", "[": "-LSB-", "]": "-RSB-", "{": "-LCB-", "}": "-RCB-"}
_CURRENCY = {"\u00a2": "cents", "\u00a3": "#", "\u00a4": "$", "\u0080": "$", "\u20a0": "$",
             "\u20ac": "$"}  # fmt: skip
_FRACTIONS = {"\u00bc": "1/4", "\u00bd": "1/2", "\u00be": "3/4", "\u2153": "1/3", "\u2154": "2/3"}
# Quote characters as the lexer writes them (LaTeX style); ASCII ' and " by position instead.
_QUOTE_MAP = str.maketrans({"\u0091": "`", "\u2018": "`", "\u201b": "`", "\u2039": "`",
                            "\u0092": "'", "\u2019": "'", "\u203a": "'", "\u0093": "``",
                            "\u201c": "``", "\u00ab": "``", "\u0094": "''", "\u201d": "''",
                            "\u00bb": "''"})  # fmt: skip
_AMP = re.compile(r"(?i:&amp;)")
_APOS_ENTITY = re.compile(r"(?i:&apos;)")
_QUOT_ENTITY = re.compile(r"(?i:&quot;)")
# Fast path for the common shapes with one possible reading: a plain word, a clitic, one
# punctuation mark, then white space (a period not followed by " ." as in ". . .").
_SIMPLE = re.compile(
    r"(?P<w>[A-Za-z]+?)(?P<c>(?<=[A-MO-Za-mo-z])[nN]'[tT]|'(?:[msdMSD]|(?i:re|ve|ll)))?"
    r"(?P<p>[,;:!?]|\.(?! \.))?(?=[ \t\n])"
)
_SPACES = re.compile(f"[{_SPACE}]+")
_SURROGATE_PAIR = re.compile("[\ud800-\udbff][\udc00-\udfff]")
_SURROGATE = re.compile("[\ud800-\udfff]")
_SPLIT_WORDS = frozenset(["cannot", "gonna", "gotta", "lemme", "gimme", "wanna"])


def _char_class(keep) -> str:
    """Ranges (for a regex character class) of the BMP characters `keep` accepts."""
    out, start = [], None
    for i in range(0x10001):
        ok = i < 0x10000 and keep(chr(i))
        if ok and start is None:
            start = i
        elif not ok and start is not None:
            out.append(f"\\u{start:04x}" + (f"-\\u{i - 1:04x}" if i - 1 > start else ""))
            start = None
    return "".join(out)


@functools.cache
def _rules() -> list[tuple[str, re.Pattern]]:
    """(action, pattern) in the lexer's priority order; group t is the token, c its context."""
    # The lexer's [:letter:] is Java's isLetter (categories L*), BMP only: it reads UTF-16.
    letter = _char_class(str.isalpha)
    ld = rf"[{letter}\d]"
    xletter = rf"(?:[{letter}{_EXTRA_LETTERS}]|&[aeiouAEIOU](?i:acute|grave|uml);)"
    word = rf"{xletter}(?:{xletter}|\d)*(?:[.!?]{xletter}(?:{xletter}|\d)*)*"
    fch = rf"(?:{xletter}|\d)"
    thing_part = rf"(?:[dDoOlL]{_APOSX}{ld})?{ld}+"
    thing = rf"{thing_part}(?:[-_\u058a\u2010\u2011]{thing_part})*"
    sgml = (
        r"<(?:[!?][A-Za-z-][^>\r\n]*|[A-Za-z][\w:.-]*(?:[ ]+[A-Za-z][\w:.-]*"
        r"(?:[ ]*=[ ]*(?:'[^']*'|\"[^\"]*\"))?)*[ ]*/?|/[A-Za-z][\w:.-]*)[ ]*>"
    ).replace(r"\w", "A-Za-z0-9_")
    starts = "|".join(re.escape(w[0]) + "(?i:" + re.escape(w[1:]) + ")" for w in _SENTENCE_STARTS)
    phone_sep = "[- \u00a0]"
    rules = [
        ("keep", r"(?i:c\+\+|[cf]#)"),
        ("first3", r"(?i:cannot)"),
        ("first2", r"'(?i:twas|tis)"),
        ("drop2", r"(?i:gonna|gotta|lemme|gimme|wanna)"),
        ("space", sgml),
        ("dash", r"&(?i:md|mdash|ndash);|[\u0096\u0097\u2013\u2014\u2015]"),
        ("amp", r"&(?i:amp);"),
        ("keep", r"&(?i:ht|tl|ur|lr|qc|ql|qr|odq|cdq|#[0-9]+);"),
        ("soft", rf"(?P<t>{word})(?P<c>{_REDAUX})"),
        ("soft", rf"(?P<t>[A-Za-z\u00ad]*[A-MO-Za-mo-z]\u00ad*)(?P<c>{_SREDAUX})"),
        ("soft", word),
        # Words with an apostrophe inside (one alternative a rule: each takes its longest).
        ("keep", rf"{_APOS}(?i:n){_APOS}?"),
        ("keep", rf"[lLdDjJ]{_APOS}"),
        ("keep", rf"(?i:dunkin|somethin|ol){_APOS}"),
        ("keep", rf"{_APOS}(?i:em)"),
        ("keep", rf"[A-HJ-XZn]{_APOSX}[{letter}]{{2,}}"),
        ("keep", rf"{_APOS}[2-9]0(?i:s)"),
        ("keep", rf"{_APOS}(?i:till?)"),
        ("keep", rf"[{letter}]+[aeiouyAEIOUY]{_APOSX}[aeiouA-Z][{letter}]*"),
        ("keep", rf"{_APOS}(?i:cause)"),
        ("keep", r"(?i:cont'd)\.?"),
        ("keep", r"(?i:'twas|nor'easter|c'mon|e'er|s'mores|ev'ry|li'l|nat'l)"),
        ("keep", rf"(?i:o){_APOSX}(?i:o)"),
        ("keep", rf"(?P<t>(?i:y){_APOS})(?P<c>[{letter}])"),
        # URLs, e-mail, Twitter names and hashtags.
        ("keep", rf"(?i:https?)://{_URLCH}]+{_URLCH}.!?,-]"),
        (
            "keep",
            rf"(?i:www)\.(?:{_URLCH}.!?,]+\.)+[a-zA-Z]{{2,4}}"
            rf"(?:/[^ \t\n\f\r\"<>|()]+{_URLCH}.!?,-])?",
        ),
        # (In the lexer's class ",-_" is a range: no digits, capitals or '-' in these names.)
        (
            "keep",
            rf"(?:{_URLCH}`'.!?,-_$]+\.)+(?i:com|net|org|edu)"
            rf"(?:/[^ \t\n\f\r\"<>|()]+{_URLCH}.!?,-])?",
        ),
        (
            "keep",
            r"(?:(?i:&lt;)|<)?[a-zA-Z0-9][^ \t\n\f\r\"<>|()\u00a0{}]*@"
            r"(?:[^ \t\n\f\r\"<>|(){}.\u00a0]+\.)*[^ \t\n\f\r\"<>|(){}.\u00a0]+"
            r"(?:(?i:&gt;)|>)?",
        ),
        ("keep", rf"@[a-zA-Z_][a-zA-Z_0-9]*|#{xletter}+"),
        ("quote", rf"(?P<t>{_REDAUX})(?P<c>[^A-Za-z])"),
        ("quote", rf"(?P<t>{_SREDAUX})(?P<c>[^A-Za-z])"),
        # Numbers: dates, 1,000.5 and 5:30, superscripts, fractions ("3 1/2" is one token).
        ("keep", r"\d{1,2}[-/]\d{1,2}[-/]\d{2,4}"),
        ("soft", r"[-+]?(?:\d+(?:[.:,\u00ad\u066b\u066c]\d+)*|(?:[.:,\u00ad\u066b\u066c]\d+)+)"),
        (
            "keep",
            r"[\u207a\u207b\u208a\u208b]?(?:[\u2070\u00b9\u00b2\u00b3\u2074-\u2079]+"
            r"|[\u2080-\u2089]+)",
        ),
        ("space", r"(?:\d{1,4}[- \u00a0])?\d{1,4}(?:\\?/|\u2044)\d{1,4}"),
        ("fraction", r"[\u00bc\u00bd\u00be\u2153-\u215e]"),
        (
            "amp",
            r"-(?i:rrb|lrb|rcb|lcb|rsb|lsb)-|(?i:c\.d\.s|pro-|anti-)"
            r"|(?i:s(?:&|&amp;)(?:p-500|ls))|(?i:cap)" + _APOS + r"(?i:n)"
            r"|(?i:c)" + _APOS + r"(?i:est)",
        ),
        ("keep", r"[A-Za-z0-9]+(?:-[A-Za-z]+){0,2}(?:\\?/[A-Za-z0-9]+(?:-[A-Za-z]+){0,2}){1,2}"),
        ("keep", r"[A-Z]*\$|#"),
        ("currency", "[\u00a2-\u00a5\u0080\u20a0\u20ac\u060b\u0e3f\u20a4\uffe0\uffe1\uffe5\uffe6]"),
        # Abbreviations and acronyms keeping their period.
        (
            "acronym",
            rf"(?P<t>(?:[A-Za-z](?:\.[A-Za-z])*|{_ACRO_SPECIAL})\.)"
            rf"(?P<c>{_SPACENL}+(?:{starts}|{sgml}){_SPACENL})",
        ),
        ("keep", rf"(?P<t>(?i:ca|figs?|prop|nos?|art|bldg|op)\.)(?P<c>{_SPACENL}?\d)"),
        ("keep", rf"(?P<t>(?i:pt)[eyEY]\.|(?i:co)\.)(?P<c>[{_SPACE}](?i:ltd|lim))"),
        ("keep", rf"(?P<t>(?i:{_ABBREV1})\.)(?P<c>[\s\S]{{2}})"),
        ("keep", rf"(?i:{_ABBREV1})\."),
        ("keep", rf"(?:(?i:{_ABBREV2})|[A-Za-z](?:\.[A-Za-z])*|{_ACRO_SPECIAL})\."),
        ("keep", rf"(?P<t>{_ACRO_SPECIAL})(?P<c>{_SPACENL})"),
        ("keep", rf"(?P<t>{_APOS}[0-9][0-9])(?P<c>{_SPACENL})"),
        (
            "keep",
            rf"(?P<t>{fch}+(?:\.{fch}+)*\.(?i:{_FILE_EXTENSIONS}))"
            rf"(?P<c>{_SPACENL}|[.?!,])",
        ),
        ("soft", rf"(?P<t>{word}\.)(?P<c>{_INSENTP})"),
        (
            "phone",
            rf"(?:\([0-9]{{2,3}}\)[ \u00a0]?|(?:\+\+?)?(?:[0-9]{{2,4}}{phone_sep})?"
            rf"[0-9]{{2,4}}{phone_sep})[0-9]{{3,4}}{phone_sep}?[0-9]{{3,5}}",
        ),
        ("phone", r"(?:(?:\+\+?)?[0-9]{2,4}\.)?[0-9]{2,4}\.[0-9]{3,4}\.[0-9]{3,5}"),
        ("open_quote", r"(?P<t>\"|(?i:&quot;))(?P<c>[A-Za-z0-9$])"),
        ("quote", r"\"|(?i:&quot;)"),
        ("skip", "\x7f"),
        ("lt", r"<|(?i:&lt;)"),
        ("gt", r">|(?i:&gt;)"),
        # Emoticons: ":)" is one token, unless a letter or digit follows it.
        ("paren", r"(?P<t>[<>]?[:;=][-o*']?[()DPdpO\\{@|\[\]])(?P<c>[^A-Za-z0-9])"),
        ("paren", r"[-^x=~<>']_[-^x=~<>']"),
        ("paren", r"\([-^x=~<>'][_.]?[-^x=~<>']\)"),
        ("paren", r"\([\^x=~<>']-[\^x=~<>'`]\)"),
        ("bracket", r"[{}\[\]()]"),
        ("hyphens", r"-+"),
        ("ellipsis", r"\.{3,5}"),
        ("ellipsis", r"(?:\.[ \u00a0]){2,4}\."),
        ("ellipsis", r"[\u0085\u2026]"),
        ("keep", r"@+|#+|_+|\*+|(?:\\\*){1,3}"),
        ("keep", _INSENTP),
        ("keep", r"[?!]+"),  # so "!!!" and "?!" are tokens, and not removed
        ("keep", r"[.\u00a1\u00bf\u037e\u0589\u061f\u06d4\u0700-\u0702\u07fa\u3002=/]"),
        ("soft", rf"(?P<t>{_HTHING}\.)(?P<c>{_INSENTP})"),
        ("soft", _HTHING),
        ("keep", rf"(?P<t>{thing}\.)(?P<c>{_INSENTP})"),
        ("keep", thing),
        ("amp", rf"(?P<t>{_THINGA}\.)(?P<c>{_INSENTP})"),
        ("amp", _THINGA),
        ("open_quote", r"(?P<t>')(?P<c>[A-Za-z][^ \t\n\r\u00a0])"),
        ("quote", _REDAUX),
        ("quote", _SREDAUX),
        ("quote", "''"),
        ("quote", "[`\u0091-\u0094\u2018-\u201f\u2039\u203a\u00ab\u00bb]{1,2}"),
        ("quote", _APOS),
        ("keep", r"<<|>>"),
        ("keep", f"[{_MISC_SYMBOLS}]"),
        # Skipped, each alternative on its own: a run of spaces is one match (which may end
        # in a no-break space that would otherwise start a URL), zero-width ones are not.
        ("skip", f"[{_SPACE}]+"),
        ("skip", r"\x00|[\u200b\u200e\u200f\ufeff]|(?i:&nbsp;)"),
        ("skip", r"\r\n|[\n\r\u2028\u2029\x0b\x0c\x85]"),
    ]
    out = []
    for action, pattern in rules:
        if "(?P<t>" not in pattern:
            pattern = f"(?P<t>{pattern})"
        out.append((action, re.compile(pattern)))
    return out


def _needs_rules(word: str, punct: str | None) -> bool:
    """Whether `word` (+ `punct`) may read otherwise than as a plain word: cannot, gonna, ...
    split; a single letter or an abbreviation keeps its period."""
    if word.lower() in _SPLIT_WORDS:
        return True
    return punct == "." and (len(word) == 1 or _abbreviation().fullmatch(word + ".") is not None)


@functools.cache
def _abbreviation() -> re.Pattern:
    return re.compile(
        rf"(?i:{_ABBREV1})\.|(?i:{_ABBREV2})\.|(?i:ca|figs?|prop|nos?|art|bldg|op|co)\."
        r"|(?i:pt)[eyEY]\."
    )


def _without_soft_hyphens(tok: str) -> str:
    return tok.replace("\u00ad", "") or "-"


def _latex_quotes(tok: str, opening: bool) -> str:
    tok = _APOS_ENTITY.sub("'", _QUOT_ENTITY.sub('"', tok))
    tok = tok.replace("'", "`" if opening else "'").replace('"', "``" if opening else "''")
    return tok.translate(_QUOTE_MAP)


def _parens(tok: str) -> str:
    return tok.replace("(", "-LRB-").replace(")", "-RRB-")


def _act(action: str, tok: str) -> tuple[str | None, int]:
    """(token text or None for none, characters consumed) for a match of `action`'s class."""
    if action == "skip":
        return None, len(tok)
    if action == "first3":  # cannot -> can + not
        return tok[:3], 3
    if action == "first2":  # 'tis -> 't + is
        return tok[:2], 2
    if action == "drop2":  # gonna -> gon + na
        return tok[:-2], len(tok) - 2
    if action == "acronym":  # "I." before "The": the letter, then the period; "U.S." kept
        return (tok[0], 1) if len(tok) == 2 else (tok, len(tok) - 1)
    return _TOKEN_TEXT[action](tok), len(tok)


# How each class writes its token (spaces inside one become no-break spaces, as the lexer's
# normalizeSpace option does; brackets become -LRB- and the like).
_TOKEN_TEXT = {
    "keep": lambda t: t,
    "soft": _without_soft_hyphens,
    "space": lambda t: t.replace(" ", "\u00a0"),
    "phone": lambda t: _parens(t.replace(" ", "\u00a0")),
    "dash": lambda t: "--",
    "amp": lambda t: _AMP.sub("&", t),
    "quote": lambda t: _latex_quotes(t, opening=False),
    "open_quote": lambda t: _latex_quotes(t, opening=True),
    "fraction": lambda t: _FRACTIONS.get(t, t),
    "currency": lambda t: _CURRENCY.get(t, t),
    "lt": lambda t: "<",
    "gt": lambda t: ">",
    "paren": _parens,
    "bracket": _BRACKETS.__getitem__,
    "hyphens": lambda t: "--" if 3 <= len(t) <= 4 else t,
    "ellipsis": lambda t: "...",
}


def _utf16_units(text: str) -> str:
    """Characters beyond the BMP as two (lone surrogate) units, as the Java lexer reads them."""
    if text.isascii() or max(text) < "\U00010000":
        return text
    out = []
    for ch in text:
        cp = ord(ch)
        if cp < 0x10000:
            out.append(ch)
        else:
            out.append(chr(0xD800 + ((cp - 0x10000) >> 10)) + chr(0xDC00 + (cp & 0x3FF)))
    return "".join(out)


def _from_utf16_units(tok: str) -> str:
    """A token's surrogate pairs as characters again (Java's output encoder writes '?' for a
    lone one)."""
    tok = _SURROGATE_PAIR.sub(
        lambda m: chr(0x10000 + ((ord(m[0][0]) - 0xD800) << 10) + ord(m[0][1]) - 0xDC00), tok
    )
    return _SURROGATE.sub("?", tok)


def _ptb_tokens(text: str) -> list[str]:
    """Stanford PTBTokenizer 3.4.1's tokens of one line (default options, not lower-cased)."""
    rules = _rules()
    # pycocoevalcap puts each caption on its own line, so a newline always follows it.
    units = _utf16_units(text.replace("\n", " "))
    beyond_bmp = len(units) != len(text)
    text = units + "\n"
    out: list[str] = []
    i = 0
    while i < len(text):
        if text[i] in " \t\n":  # only white space starts with these; a run of spaces is one
            i = _SPACES.match(text, i).end() if text[i] != "\n" else i + 1
            continue
        m = _SIMPLE.match(text, i)
        if m and (m["c"] or not _needs_rules(m["w"], m["p"])):
            out.extend(t for t in m.group("w", "c", "p") if t)
            i = m.end()
            continue
        best_len, best = 0, None
        for action, rx in rules:
            m = rx.match(text, i)
            if m and m.end() - i > best_len:  # longest match; the earlier class wins a tie
                best_len, best = m.end() - i, (action, m.group("t"))
        if best is None:  # untokenizable: the lexer deletes it
            i += 1
            continue
        tok, used = _act(*best)
        if tok is not None:
            out.append(_from_utf16_units(tok) if beyond_bmp else tok)
        i += used
    return out


def _cased_in_word(chars) -> bool:
    """Whether a cased letter comes before the word ends (Java's word BreakIterator, as it
    behaves here: letters and digits, joined by - _ . ' or an en dash, make one word)."""
    chars = list(chars)
    for i, ch in enumerate(chars):
        if ch.lower() != ch.upper():
            return True
        if not ch.isalnum() and not (
            ch in "-_.'\u2013" and i + 1 < len(chars) and chars[i + 1].isalnum()
        ):
            return False
    return False


def _java_lower(tok: str) -> str:
    """Java's toLowerCase: a capital sigma is final after a cased letter of its word and
    before none (Python's lower() looks only at the neighbouring characters)."""
    if "\u03a3" not in tok:
        return tok.lower()
    out = []
    for i, ch in enumerate(tok):
        if ch == "\u03a3":
            final = _cased_in_word(reversed(tok[:i])) and not _cased_in_word(tok[i + 1 :])
            out.append("\u03c2" if final else "\u03c3")
        else:
            out.append(ch.lower())
    return "".join(out)


def coco_tokenize(text: str) -> str:
    """A caption as pycocoevalcap's PTBTokenizer leaves it: lower-case tokens joined by spaces."""
    # pycocoevalcap's own post-processing of the Java output line, rstrip included.
    line = " ".join(_java_lower(t) for t in _ptb_tokens(text)).rstrip()
    return " ".join(t for t in line.split(" ") if t not in PTB_REMOVED)


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
