"""Every number in the course's prose is tied to the data.

For each markdown cell of each notebook, the test finds the numbers a reader would take as claims and fails on
any that is not *covered*. A number is covered when

(a) a code cell of the same notebook prints it: the same value appears in a text output (stream, text/plain or
    text/html) of the committed notebook. Outputs are regenerated when the notebooks are re-executed, so a
    number printed from the data stays covered as long as the code prints it from the data;
(b) an ``assert`` of a code cell of the same notebook contains it (a *check cell*: code that reads the stored
    tables and asserts the number). Only the asserted expression counts: its numeric literals and numbers
    written in its string literals, not its indices (``x[0]``) and not the assert's message; or
(c) it sits in a phrase of the allowlist below (per notebook, or for all of them), each entry with its reason.
    The allowlist holds numbers that are not results of this course: the protocol (5 demonstrations, 50
    episodes, 2 dummy queries), the paper's own figures, years of cited papers, the model's name and size,
    the rating scale of the exercises. Results are never allowlisted.

What counts as a number in prose:

- digits: integers, decimals and thousands (``18``, ``0.76``, ``1,000``), with a unit or suffix glued on the
  right (``74%``, ``7.0x``, ``270M``); a percentage also matches its fraction (``76%`` is covered by ``0.76``).
  Digits glued on the left to a letter, or to a word by a hyphen, are part of a name (``gemma3``,
  ``gemma3-270m``, ``pythia-2.8b``) and are not numbers;
- number words used as counts: ``two`` to ``twenty``, the tens, ``hundred(s)`` and ``thousand(s)``, and
  ``one`` when it opens a count (``one of 5``, ``one in ten``). Bare ``one``, ``single``, ``first`` or
  ``half`` are left out: as articles and ordinals they are far more common than as results, and the sentences
  that use them were audited by hand;
- values are compared, not strings, but an integer only matches an integer: ``0.44`` is covered by ``0.440``
  and ``four`` by ``4``, while ``1`` (as in "1 of 5 pairs") is not covered by an accuracy printed as ``1.00``.

What is not prose, and is skipped: fenced code blocks and inline code spans (including the folded solutions'
code), HTML tags, link targets and bare URLs, LaTeX ``$...$``, the numbering of headings (``# 5 ·``,
``### Exercise 5.1 ·``), references to other parts of the course or the paper (``notebook 3``, ``Section 5.2``,
``Table 2``, ``Figure 4``, ``exercise 2.1``), and a notebook's own exercise numbers wherever they appear
(``(5.2)``).
"""

from __future__ import annotations

import ast
import json
import re
from pathlib import Path

import pytest

pytestmark = pytest.mark.tiny

NOTEBOOKS = sorted((Path(__file__).resolve().parents[1] / "notebooks").glob("[0-9][0-9]_*.ipynb"))

# (pattern, reason): numbers inside a match of the pattern are not results. Patterns are case-insensitive, are
# matched against the prose (code spans already blanked out), and a space in a pattern matches any whitespace.
ALLOWED_EVERYWHERE = [
    (r"\((?:🔴|🔵), 1–5\b|\b(?:Difficulty|Importance) [1-5]/5\b|\babout \d+ min\b",
     "the exercises' rating scale, ratings and estimated times"),
    (r"\b(?:5|five)\b(?: [\w-]+)? demonstrations|\bk = 5\b", "protocol: k = 5 demonstrations per episode"),
    (r"\b(?:2|two) \*?dummy quer(?:y|ies)|over \*\*two\*\* dummy", "protocol: θ averaged over 2 dummy queries"),
    (r"\b50 (?:dev |test )?(?:episodes|queries)", "protocol: 50 dev and 50 test episodes per task"),
    (r"\b95%|±0\.14\b|\bp < 0\.05\b|\b5% level", "protocol: 95% intervals, their half-width near 0.5 at 50 episodes, "
     "the 5% significance level"),
    (r"\b(?:270M|Gemma 3)\b", "the model's name and size"),
    (r"\b2023\b|\b2024\b", "years of the cited papers"),
    (r"\b18 tasks\b", "the paper's 18 tasks"),
]

ALLOWED = {
    "01_icl_basics": [
        (r"\b(?:n = )?20 episodes|\b10 episodes", "this notebook's own sample sizes, set in its code"),
        (r"\b10 to 100 times larger", "the paper's model sizes (2.8B to 30B) against 270M"),
        (r"\bfour categories", "the paper's four task categories"),
    ],
    "02_task_vectors": [
        (r"\b20 episodes", "this notebook's own sample size, set in its code"),
        (r"\broughly 80–90%|2\.8B to 30B", "the paper's own figures"),
        (r"\bfour tasks\b", "the quick sweep's task count for a model with no stored run (experiments.quick_tasks)"),
        (r"\bthree exercises", "the number of exercises in this notebook"),
        (r"\bPythia 2\.8B\b", "the name of the paper's model closest in size"),
    ],
    "03_layer_sweep": [
        (r"\b10 (?:dev )?episodes|\bthree tasks", "the live fallback's and this notebook's own sample sizes"),
        (r"\bsix model families", "the families the test suite checks the engine on (tests/conftest.py)"),
        (r"\bsix tasks on four embedded models|\bfour models|\bsix tasks of 30 dev episodes",
         "the design of the depth run (tv_utils.analyses.depth)"),
        (r"\b0\.30–0\.44\b", "the paper's range of best relative depths (read from its layer figures)"),
    ],
    "04_geometry": [
        (r"\b50 episodes × 18 tasks|\bthree layers|\bfour layers either side|\bsix tasks live, 10 episodes",
         "the design of the geometry run and of its live fallback"),
        (r"\b5-nearest-neighbour|\b1 = tight|\b0 = overlapping",
         "method parameters and the silhouette's scale"),
        (r"\bthree \*new\* episodes", "this notebook's own sample size, set in its code"),
    ],
    "05_conflicting_tasks": [
        (r"\b(?:five|5) pairs", "the paper's five pairs of tasks (its Table 2)"),
        (r"\b10 episodes", "the widget's sample size"),
    ],
    "06_vocabulary_projection": [
        (r"\b20 episodes|\bat least two letters|\bmore than a quarter of the tasks|\btwo layers (?:later|after L)"
         r"|\b5 new\s+episodes", "the design of the vocab run and of this notebook's cells"),
        (r"\b0 for the top token", "the definition of an answer's rank in exercise 6.2"),
    ],
    "07_beyond": [
        (r"\bat least 3 pairs", "the widget's minimum input"),
        (r"\blast two (?:pairs|inputs)|\bthe two dummy prompts", "the own-task θ's design (the protocol's 2 dummies)"),
        (r"\b1, 2, 4 or 8", "the design of the robustness run"),
        (r"\bα = 0\b|\bα = 1\b|\(1\)", "the ends of the interpolation and the unscaled θ, by definition"),
        (r"\bfour things", "the number of sections of this notebook"),
        (r"\(notebook 1\)|\((?:[2-6])(?:[;)])", "references to the course's notebooks in the recap"),
    ],
    "08_function_vectors": [
        (r"\b(?:10|ten)\s+prompts", "protocol: 10 prompts per task for the indirect effects (--n-effect)"),
        (r"\b18 layers × 4 heads", "the architecture of the model"),
        (r"\b1\.0 for a one-to-one", "the definition of mapping rank"),
        (r"\btwo ways of using", "the design of the several-vectors run"),
    ],
}

_WORDS = {w: i for i, w in enumerate(
    "zero one two three four five six seven eight nine ten eleven twelve thirteen fourteen fifteen sixteen "
    "seventeen eighteen nineteen twenty".split())}
_WORDS.update({"thirty": 30, "forty": 40, "fifty": 50, "sixty": 60, "seventy": 70, "eighty": 80, "ninety": 90,
               "hundred": 100, "hundreds": 100, "thousand": 1000, "thousands": 1000})
_COUNT_WORDS = [w for w in _WORDS if w not in ("zero", "one")]
_NUMBER = re.compile(r"(?<![\w.′])(?<!\w-)(\d+(?:,\d{3})*(?:\.\d+)?)(%?)")
_WORD = re.compile(r"\b(" + "|".join(_COUNT_WORDS) + r")\b|\b(one)(?= (?:of|in|out of) (?:\d|" + "|".join(
    _COUNT_WORDS) + r"))", re.IGNORECASE)
_REFERENCE = re.compile(r"\b(?:notebooks?|sections?|tables?|figures?|exercises?|appendix)\s+\d+(?:\.\d+)?"
                        r"(?:\s*(?:,|and|or|–|-)\s*\d+(?:\.\d+)?)*", re.IGNORECASE)
_EXERCISE = re.compile(r"^#+\s*Exercise\s+(\d+\.\d+)", re.MULTILINE)


def _blank(text: str, pattern, flags=0) -> str:
    """`text` with every match of `pattern` replaced by spaces (so positions and word boundaries stay)."""
    return re.sub(pattern, lambda m: " " * len(m.group(0)), text, flags=flags)


def prose(markdown: str) -> str:
    """The prose of a markdown cell: what a reader takes as text, without code, markup, links and math."""
    text = _blank(markdown, r"```.*?```", re.DOTALL)
    text = _blank(text, r"`[^`\n]*`")
    text = _blank(text, r"\$[^$\n]+\$")
    text = re.sub(r"\]\([^)\s]*\)", "]", text)  # keep a link's text, drop its target
    text = _blank(text, r"https?://\S+")
    text = _blank(text, r"<[^>\n]+>")
    text = _blank(text, r"^#+\s*(?:Exercise\s+)?\d+(?:\.\d+)?\s*·", re.MULTILINE)
    return text


def _value(number: str) -> float:
    return float(number.replace(",", ""))


def numbers_in_prose(markdown: str, allowed, exercises=()) -> list[tuple[str, float, str]]:
    """(as written, value, kind) for each number of a markdown cell outside the allowlist; kind is "int",
    "decimal" or "percent". `exercises` are the notebook's exercise numbers ("5.1"), skipped."""
    text = prose(markdown).replace("\n", " ")  # phrases may break across lines; positions stay the same
    for pattern, _ in allowed:
        text = _blank(text, pattern.replace(" ", r"\s+"), re.IGNORECASE)
    text = _blank(text, _REFERENCE)
    found = []
    for m in _NUMBER.finditer(text):
        if m.group(1) not in exercises:
            kind = "percent" if m.group(2) else "decimal" if "." in m.group(1) else "int"
            found.append((m.group(0), _value(m.group(1)), kind))
    for m in _WORD.finditer(text):
        word = (m.group(1) or m.group(2)).lower()
        found.append((word, float(_WORDS[word]), "int"))
    return found


def _output_text(cell) -> str:
    parts = []
    for out in cell.get("outputs", []):
        if out.get("output_type") == "stream":
            parts.append("".join(out.get("text", "")))
        for mime in ("text/plain", "text/html"):
            data = out.get("data", {}).get(mime)
            if data:
                parts.append("".join(data))
    return "\n".join(parts)


def _tokens(text: str) -> set[tuple[str, float]]:
    return {("decimal" if "." in n else "int", _value(n))
            for n in re.findall(r"(?<![\w.])(\d+(?:,\d{3})*(?:\.\d+)?)", text)}


def asserted_values(source: str) -> set[tuple[str, float]]:
    """(kind, value) of the numbers in the asserted expressions of a code cell: its numeric literals, and numbers
    written inside its string literals, but not indices or slices (``x[0]``) and not the assert's message.
    IPython magics and shell lines are left out."""
    code = "\n".join("" if line.lstrip().startswith(("%", "!")) else line for line in source.splitlines())
    try:
        tree = ast.parse(code)
    except SyntaxError:  # not plain Python: fall back to the text of lines that start with `assert`
        return _tokens("\n".join(line for line in code.splitlines() if line.lstrip().startswith("assert ")))
    values, stack = set(), [node.test for node in ast.walk(tree) if isinstance(node, ast.Assert)]
    while stack:
        node = stack.pop()
        if isinstance(node, ast.Subscript):
            stack.append(node.value)  # what is indexed, not the index
            continue
        if isinstance(node, ast.Constant) and not isinstance(node.value, bool):
            if isinstance(node.value, int):
                values.add(("int", float(node.value)))
            elif isinstance(node.value, float):
                values.add(("decimal", node.value))
            elif isinstance(node.value, str):
                values |= _tokens(node.value)
        stack.extend(ast.iter_child_nodes(node))
    return values


def covered_values(nb) -> set[tuple[str, float]]:
    """(kind, value) of every number that a code cell of the notebook prints or asserts."""
    values = set()
    for cell in nb["cells"]:
        if cell["cell_type"] == "code":
            values |= _tokens(_output_text(cell)) | asserted_values("".join(cell["source"]))
    return values


def _is_covered(value: float, kind: str, values: set[tuple[str, float]]) -> bool:
    """An integer is covered by the same integer, a decimal by the same value written with decimals (0.44 by
    0.440), a percentage by either (76% by 76 or by 0.76)."""
    if kind == "percent":
        wanted = [("int", value), ("decimal", value), ("decimal", round(value / 100, 10))]
    else:
        wanted = [(kind, value)]
    return any(k == wk and abs(v - wv) < 1e-9 for wk, wv in wanted for k, v in values)


def uncovered(path: Path) -> list[str]:
    nb = json.loads(path.read_text())
    values = covered_values(nb)
    allowed = ALLOWED_EVERYWHERE + ALLOWED.get(path.stem, [])
    markdowns = {i: "".join(c["source"]) for i, c in enumerate(nb["cells"]) if c["cell_type"] == "markdown"}
    exercises = {n for md in markdowns.values() for n in _EXERCISE.findall(md)}
    missing = []
    for i, markdown in markdowns.items():
        for written, value, kind in numbers_in_prose(markdown, allowed, exercises):
            if not _is_covered(value, kind, values):
                line = next((l for l in prose(markdown).splitlines() if written in l), "").strip()
                missing.append(f"cell {i}: {written!r} in: {line[:110]}")
    return missing


def test_the_allowlist_names_only_notebooks_that_exist():
    assert set(ALLOWED) <= {p.stem for p in NOTEBOOKS}
    assert all(reason.strip() for entries in [ALLOWED_EVERYWHERE, *ALLOWED.values()] for _, reason in entries)


def test_every_allowlist_entry_is_used():
    """An entry that no longer matches any prose is stale: remove it, so the allowlist stays short."""
    for path in NOTEBOOKS:
        nb = json.loads(path.read_text())
        text = " ".join(prose("".join(c["source"])).replace("\n", " ") for c in nb["cells"]
                        if c["cell_type"] == "markdown")
        for pattern, reason in ALLOWED.get(path.stem, []):
            assert re.search(pattern.replace(" ", r"\s+"), text, re.IGNORECASE), \
                f"{path.stem}: stale allowlist entry {pattern!r} ({reason})"
    everything = " ".join(prose("".join(c["source"])).replace("\n", " ") for p in NOTEBOOKS
                          for c in json.loads(p.read_text())["cells"] if c["cell_type"] == "markdown")
    for pattern, reason in ALLOWED_EVERYWHERE:
        assert re.search(pattern.replace(" ", r"\s+"), everything, re.IGNORECASE), \
            f"stale allowlist entry {pattern!r} ({reason})"


def test_the_scanner_finds_what_it_should():
    md = ("On 14 of 18 tasks the gap is 0.76 (76%), nine in ten; `0.33` and\n```python\nx = 12\n```\n"
          "[paper](https://arxiv.org/abs/2310.15916), notebook 3, one of five, gemma3-270m, 7.0x.")
    got = [w for w, _, _ in numbers_in_prose(md, [])]
    assert got == ["14", "18", "0.76", "76%", "7.0", "nine", "ten", "one", "five"]
    assert _is_covered(76.0, "percent", _tokens("0.76")) and _is_covered(0.44, "decimal", _tokens("0.440"))
    assert not _is_covered(1.0, "int", _tokens("1.00")) and not _is_covered(3.0, "int", _tokens("0.3"))
    got = asserted_values("if ok:\n    assert round(x[3], 2) == 0.25 and n == 14 and 'of 4 other' in s, 'message 0.99'")
    assert got == {("decimal", 0.25), ("int", 14.0), ("int", 2.0), ("int", 4.0)}


@pytest.mark.parametrize("path", NOTEBOOKS, ids=[p.stem for p in NOTEBOOKS])
def test_every_number_in_the_prose_is_printed_or_asserted(path):
    missing = uncovered(path)
    assert not missing, (f"{path.name}: numbers in the prose that no code cell prints or asserts (print them "
                         f"from the data, assert them in a check cell, or allowlist a non-result):\n  "
                         + "\n  ".join(missing))
