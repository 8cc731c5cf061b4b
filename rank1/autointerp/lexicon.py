"""The fixed category lexicon: which kind of token a token is, read from its text and its place in the chat.

Nine categories, checked in this order (the first that applies wins):

1. ``format``: chat-template tokens: special tokens (``<|im_start|>``, ``<|im_end|>``, ...), the role name
   after ``<|im_start|>`` (system, user, assistant, think), the newline that closes a role line or follows
   ``<|im_end|>``, and every token of the system turn (the template's system prompt);
2. ``answer``: answer and solution markers: the s1 ``answer`` section name, "Answer", "final", "boxed",
   and concluding words ("so", "therefore", "thus", "hence");
3. ``verification``: verification and backtracking words ("Wait", "verify", "check", "correct", "wrong",
   "mistake", "actually", ...);
4. ``operators``: arithmetic and relational operators (+ - × / = < > ...), LaTeX operators and their
   words ("plus", "minus", "times", "sum", ...);
5. ``numbers``: digit strings, number words, place values (ones, tens, hundreds), pieces of such words
   ("undred", "ousand"), single-letter variables (x, y, z, n, k, m) and constants (π);
6. ``procedure``: instruction and procedural words ("add", "subtract", "divide", "split", "carry",
   "borrow", "need", "let", "solve", "step", "then", ...);
7. ``problem``: words of the problem statement (any remaining word inside the user turn) and question
   words anywhere ("how", "many", "what", "left", "remain", "each", ...);
8. ``punctuation``: tokens made only of punctuation or whitespace;
9. ``other``: everything else.

Words are matched case-insensitively after stripping surrounding spaces and punctuation. The turn a
token belongs to is read from the window around it: the nearest ``<|im_start|>ROLE`` before it, or, at a
window's left edge, the turn that precedes the first role opened in the window (system before user,
user before assistant; think and answer are sections of the assistant turn).

Each category has a display name: the paper's where the meaning matches ("Mathematical Operators",
"Answer and Solution Markers", "Instruction and Procedural Markers"). :data:`PAPER_TOP_LEVEL` maps the
categories onto the paper's seven top-level SAE categories (stage 3's Figure 3); that mapping is coarse
(every category without a reasoning role lands in ``domain_specific_patterns``).
"""

from __future__ import annotations

import re
import string
from dataclasses import dataclass


@dataclass(frozen=True)
class Category:
    key: str
    name: str  # display name (the paper's where the meaning matches)
    short: str  # what an explanation calls it
    description: str


CATEGORIES: tuple[Category, ...] = (
    Category("format", "Chat Template and Format Tokens", "chat format tokens",
             "chat-template special tokens, role names, the system prompt"),
    Category("answer", "Answer and Solution Markers", "answer markers",
             "the answer section, 'Answer', 'final', 'boxed', concluding words (so, therefore)"),
    Category("verification", "Verification and Backtracking", "verification words",
             "Wait, verify, check, correct, wrong, mistake, actually"),
    Category("operators", "Mathematical Operators", "arithmetic operators",
             "+ - x / = < > and operator words (plus, minus, times, sum)"),
    Category("numbers", "Numbers and Variables", "numbers",
             "digits, number words, place values, single-letter variables"),
    Category("procedure", "Instruction and Procedural Markers", "procedural words",
             "instruction and step words: add, subtract, divide, split, carry, need, let, solve, then"),
    Category("problem", "Problem Statement Words", "problem words",
             "words of the problem statement and question words (how many, what, left)"),
    Category("punctuation", "Punctuation and Whitespace", "punctuation",
             "punctuation, newlines, spaces"),
    Category("other", "Other", "other words", "anything else"),
)
CATEGORY_KEYS: tuple[str, ...] = tuple(c.key for c in CATEGORIES)
BY_KEY: dict[str, Category] = {c.key: c for c in CATEGORIES}

# The paper's seven top-level SAE categories (Figure 3; the authors' names, verbatim) and where each
# lexicon category goes.
PAPER_TOP_LEVEL: tuple[str, ...] = (
    "computational_operations", "symbolic_manipulation", "variable_value_tracking", "reasoning_flow_control",
    "domain_specific_patterns", "relational_logical_operators", "result_formulation")
LEXICON_TO_TOP_LEVEL: dict[str, str] = {
    "operators": "computational_operations",
    "numbers": "variable_value_tracking",
    "verification": "reasoning_flow_control",
    "procedure": "reasoning_flow_control",
    "answer": "result_formulation",
    "format": "domain_specific_patterns",
    "problem": "domain_specific_patterns",
    "punctuation": "domain_specific_patterns",
    "other": "domain_specific_patterns",
}

SPECIAL_RE = re.compile(r"^<\|[^|<>]*\|>$|^</?s>$|^<(pad|unk|eos|bos)>$")
OPEN, CLOSE = "<|im_start|>", "<|im_end|>"
ROLES = ("system", "user", "assistant", "think", "answer")
PRECEDING = {"user": "system", "assistant": "user", "think": "assistant", "answer": "assistant"}
SECTION_OF = {"think": "assistant", "answer": "assistant"}  # s1 sections inside the assistant turn

ANSWER_WORDS = {"answer", "answers", "final", "finally", "boxed", "\\boxed", "therefore", "thus", "hence", "so",
                "conclusion", "result", "solution"}
VERIFICATION_WORDS = {"wait", "verify", "verifying", "verified", "verification", "check", "checking", "checks",
                      "recheck", "double-check", "correct", "correctly", "incorrect", "wrong", "mistake", "error",
                      "oops", "actually", "hmm", "forgot", "confirm", "confirms", "again", "reconsider",
                      "alternatively", "however", "revisit", "recompute", "recalculate"}
OPERATOR_SYMBOLS = {"+", "-", "−", "–", "×", "*", "/", "÷", "=", "<", ">", "≤", "≥", "≠", "^", "±", "√", "%", "·",
                    "==", "<=", ">=", "!=", "\\frac", "\\sqrt", "\\cdot", "\\times", "\\div", "\\pm", "\\le",
                    "\\ge", "\\leq", "\\geq", "\\neq", "\\sum", "\\int"}
OPERATOR_WORDS = {"plus", "minus", "times", "divided", "multiplied", "equals", "equal", "squared", "cubed",
                  "sqrt", "mod", "modulo", "sum", "product", "difference", "quotient", "remainder"}
NUMBER_WORDS = {"zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine", "ten", "eleven",
                "twelve", "thirteen", "fourteen", "fifteen", "sixteen", "seventeen", "eighteen", "nineteen",
                "twenty", "thirty", "forty", "fifty", "sixty", "seventy", "eighty", "ninety", "hundred",
                "hundreds", "thousand", "thousands", "million", "millions", "billion", "ones", "tens", "half",
                "twice", "undred", "ousand", "ousands", "illion", "x", "y", "z", "n", "k", "m", "π", "\\pi", "pi"}
PROCEDURE_WORDS = {"add", "adding", "subtract", "subtracting", "sub", "tract", "multiply", "multiplying", "divide",
                   "dividing", "div", "split", "remove", "carry", "borrow", "simplify", "compute", "calculate",
                   "solve", "substitute", "expand", "factor", "rearrange", "isolate", "step", "steps", "first",
                   "next", "then", "now", "need", "let", "write", "give", "find", "consider", "apply", "use",
                   "break", "total", "start", "plug"}
PROBLEM_WORDS = {"how", "many", "much", "what", "which", "who", "left", "remain", "remains", "remaining", "each",
                 "per"}
PUNCTUATION = set(string.punctuation) | set("，。：；？！“”‘’…—")
DIGITS_RE = re.compile(r"^[\d.,]*\d[\d.,]*$")


def _word(token: str) -> str:
    """Lower-cased token without surrounding whitespace, and without surrounding punctuation when it has
    letters or digits inside ("Wait," -> "wait")."""
    t = token.strip().lower()
    if any(ch.isalnum() for ch in t):
        t = t.strip(string.punctuation.replace("\\", ""))
    return t


def lexical_category(token: str) -> str:
    """Category of a token from its text alone (rules 2-8 of the module docstring without the turn)."""
    if SPECIAL_RE.match(token.strip()):
        return "format"
    w = _word(token)
    if w in ANSWER_WORDS:
        return "answer"
    if w in VERIFICATION_WORDS:
        return "verification"
    if w in OPERATOR_SYMBOLS or w in OPERATOR_WORDS:
        return "operators"
    if w in NUMBER_WORDS or DIGITS_RE.match(w):
        return "numbers"
    if w in PROCEDURE_WORDS:
        return "procedure"
    if w in PROBLEM_WORDS:
        return "problem"
    if all(ch in PUNCTUATION or ch.isspace() for ch in token):
        return "punctuation"
    return "other"


def turns(tokens: list[str]) -> tuple[list[str | None], list[bool]]:
    """(turn of each token, whether it is template structure): turn is system / user / assistant / None
    (unknown); structure marks special tokens, role names after ``<|im_start|>`` and template newlines."""
    n = len(tokens)
    role: list[str | None] = [None] * n
    structure = [bool(SPECIAL_RE.match(t.strip())) for t in tokens]
    current, first_open, first_close = None, None, None
    i = 0
    while i < n:
        t = tokens[i]
        if t == OPEN:
            name = tokens[i + 1].strip().lower() if i + 1 < n else ""
            if name in ROLES:
                structure[i + 1] = True
                current = SECTION_OF.get(name, name)
                if first_open is None:
                    first_open = name
                if i + 2 < n and tokens[i + 2].strip() == "" and "\n" in tokens[i + 2]:
                    structure[i + 2] = True
                i += 2 + int(i + 2 < n and structure[i + 2])
                continue
        elif t == CLOSE:
            first_close = i if first_close is None and first_open is None else first_close
            current = None
            if i + 1 < n and tokens[i + 1].strip() == "" and "\n" in tokens[i + 1]:
                structure[i + 1] = True
        role[i] = current
        i += 1
    if first_open is not None:  # the left edge: the turn before the first one the window opens
        before = PRECEDING.get(first_open)
        before = SECTION_OF.get(before, before) if before else None
        for j in range(n):
            if tokens[j] == OPEN or j == first_close:
                break
            role[j] = before
    return role, structure


def token_categories(tokens: list[str]) -> list[str]:
    """Category of every token of a window (see the module docstring for the rules)."""
    role, structure = turns(tokens)
    out = []
    for tok, r, s in zip(tokens, role, structure, strict=True):
        if s:
            out.append("answer" if tok.strip().lower() == "answer" else "format")
        elif r == "system":
            out.append("format")
        else:
            c = lexical_category(tok)
            out.append("problem" if c == "other" and r == "user" and any(ch.isalpha() for ch in tok) else c)
    return out


def normalise_token(token: str) -> str:
    """How explanations name and compare tokens: without surrounding whitespace; a blank token as it is."""
    return token.strip() or token


# Words that name a category in free text (an LLM's explanation scored offline).
CATEGORY_CUES: dict[str, tuple[str, ...]] = {
    "format": ("chat format", "template", "special token", "system prompt", "role token", "im_start", "im_end",
               "format token"),
    "answer": ("answer", "solution marker", "final result", "conclu", "boxed"),
    "verification": ("verif", "backtrack", "self-check", "checking", "wait", "mistake", "correction"),
    "operators": ("operator", "arithmetic", "plus sign", "minus sign", "equals", "equal sign", "math symbol"),
    "numbers": ("number", "digit", "numeral", "numeric", "variable"),
    "procedure": ("procedur", "instruction", "step word", "imperative"),
    "problem": ("problem word", "problem statement", "question word", "word problem"),
    "punctuation": ("punctuation", "newline", "comma", "period", "colon", "whitespace"),
}
