"""The paper's 18 tasks, user-defined tasks, and seeded sampling of ICL episodes.

A task is a list of (input, output) pairs. Knowledge tasks score a prediction on the answer's first
token (their answers may span several tokens); every other task keeps only pairs whose answer is a
single token for the model at hand (see `prompts.usable_task`). Data lives in `tv_utils/data/`.
"""

from __future__ import annotations

import csv
import io
import json
import random
import string
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from functools import lru_cache
from importlib.resources import files
from pathlib import Path

CATEGORIES = ("algorithmic", "translation", "linguistic", "knowledge")  # the paper's
KNOWN_CATEGORIES = (*CATEGORIES, "custom")  # and user-defined tasks
ARROW = "->"  # separates input from output in prompts (`example:{x}->{y}`) and in typed pairs


@dataclass(frozen=True)
class Task:
    name: str
    category: str
    pairs: tuple[tuple[str, str], ...]
    description: str = ""
    spaced: bool = True  # answers follow the arrow after a space (`-> chien`); see `prompts.usable_task`

    @property
    def multi_token_answers(self) -> bool:
        """Knowledge and user answers ("New Delhi") may span tokens; they are scored on their first token."""
        return self.category in ("knowledge", "custom")

    def __len__(self) -> int:
        return len(self.pairs)


@dataclass(frozen=True)
class Episode:
    """k demonstrations, dummy queries x' (used only to extract theta) and one test query."""

    demos: tuple[tuple[str, str], ...]
    dummies: tuple[str, ...]
    query: tuple[str, str]
    task: str = field(default="", compare=False)
    spaced: bool = True  # the task's answer spacing (`Task.spaced`), which the prompts follow


def _read_csv(filename: str) -> list[dict[str, str]]:
    with files("tv_utils").joinpath("data", filename).open(encoding="utf-8") as f:
        return list(csv.DictReader(f))


def _columns(filename: str, src: str, dst: str) -> list[tuple[str, str]]:
    return [(row[src], row[dst]) for row in _read_csv(filename)]


def _letter_lists(pick, n: int = 300, seed: int = 1234) -> list[tuple[str, str]]:
    """Comma-separated lists of 3 distinct letters; generated with a fixed seed so the task is data."""
    rng = random.Random(seed)
    pairs: dict[str, str] = {}
    while len(pairs) < n:
        items = rng.sample(string.ascii_lowercase, 3)
        pairs[",".join(items)] = pick(items)
    return list(pairs.items())


_LETTERS = string.ascii_lowercase

# name -> (category, description, builder of pairs)
_BUILDERS = {
    "next_letter": ("algorithmic", "a -> b", lambda: list(zip(_LETTERS[:-1], _LETTERS[1:]))),
    "prev_letter": ("algorithmic", "b -> a", lambda: list(zip(_LETTERS[1:], _LETTERS[:-1]))),
    "list_first": ("algorithmic", "q,w,e -> q", lambda: _letter_lists(lambda xs: xs[0])),
    "list_last": ("algorithmic", "q,w,e -> e", lambda: _letter_lists(lambda xs: xs[-1])),
    "to_upper": ("algorithmic", "a -> A", lambda: [(c, c.upper()) for c in _LETTERS]),
    "to_lower": ("algorithmic", "A -> a", lambda: [(c.upper(), c) for c in _LETTERS]),
    "en_fr": ("translation", "dog -> chien", lambda: _columns("translation.csv", "en", "fr")),
    "en_es": ("translation", "dog -> perro", lambda: _columns("translation.csv", "en", "es")),
    "fr_en": ("translation", "chien -> dog", lambda: _columns("translation.csv", "fr", "en")),
    "es_en": ("translation", "perro -> dog", lambda: _columns("translation.csv", "es", "en")),
    "present_simple_past_simple": ("linguistic", "go -> went", lambda: _columns("verbs.csv", "present", "past")),
    "present_simple_gerund": ("linguistic", "go -> going", lambda: _columns("verbs.csv", "present", "gerund")),
    "plural_singular": ("linguistic", "mice -> mouse", lambda: _columns("nouns.csv", "plural", "singular")),
    "antonyms": ("linguistic", "hot -> cold", lambda: _columns("antonyms.csv", "word", "antonym")),
    "country_capital": ("knowledge", "France -> Paris", lambda: _columns("country_capital.csv", "country", "capital")),
    "location_continent": ("knowledge", "Kenya -> Africa", lambda: _columns("location_continent.csv", "location", "continent")),
    "location_religion": ("knowledge", "Mecca -> Islam", lambda: _columns("location_religion.csv", "location", "religion")),
    "person_language": ("knowledge", "Goethe -> German", lambda: _columns("person_language.csv", "person", "language")),
}

TASK_NAMES: tuple[str, ...] = tuple(_BUILDERS)


@lru_cache(maxsize=None)
def get_task(name: str) -> Task:
    """One of the paper's 18 tasks by name."""
    if name not in _BUILDERS:
        raise KeyError(f"unknown task {name!r}; valid tasks: {', '.join(TASK_NAMES)}")
    category, description, build = _BUILDERS[name]
    return make_task(name, build(), category=category, description=description)


def tasks_in(category: str) -> list[str]:
    if category not in CATEGORIES:
        raise KeyError(f"unknown category {category!r}; valid categories: {', '.join(CATEGORIES)}")
    return [n for n in TASK_NAMES if _BUILDERS[n][0] == category]


def make_task(name: str, pairs, category: str = "custom", description: str = "") -> Task:
    """A task from (input, output) pairs of strings, or a dict {input: output}. Inputs must be unique, and
    values non-empty, on one line and free of `->`, since each pair becomes one `example:{x}->{y}` line."""
    if category not in KNOWN_CATEGORIES:
        raise ValueError(f"task {name!r} has unknown category {category!r}; valid categories: "
                         f"{', '.join(KNOWN_CATEGORIES)}")
    if isinstance(pairs, Mapping):
        pairs = pairs.items()
    if isinstance(pairs, str) or not isinstance(pairs, Iterable):
        raise ValueError(f"task {name!r}: pairs must be a list of (input, output) pairs of strings, got {pairs!r}")
    pairs = tuple(_checked_pair(name, p) for p in pairs)
    if len(pairs) < 2:
        raise ValueError(f"task {name!r} needs at least 2 (input, output) pairs, got {len(pairs)}")
    empty = [p for p in pairs if not p[0] or not p[1]]
    if empty:
        raise ValueError(f"task {name!r} has empty inputs or outputs: {empty[:3]}")
    inputs = [x for x, _ in pairs]
    dupes = sorted({x for x in inputs if inputs.count(x) > 1})
    if dupes:
        raise ValueError(f"task {name!r} has repeated inputs (one input, one answer): {dupes[:5]}")
    return Task(name=name, category=category, pairs=pairs, description=description)


def _checked_pair(name: str, pair) -> tuple[str, str]:
    """One (input, output) pair of one-line strings without `->`, stripped of surrounding white space."""
    if isinstance(pair, str) or not isinstance(pair, Sequence) or len(pair) != 2:
        raise ValueError(f"task {name!r}: each pair must be an (input, output) pair of strings, got {pair!r}")
    for value in pair:
        if not isinstance(value, str):
            raise ValueError(f"task {name!r}: inputs and outputs must be strings, got {value!r} "
                             f"({type(value).__name__}) in {tuple(pair)!r}")
        if "\n" in value or "\r" in value:
            raise ValueError(f"task {name!r}: {value!r} spans several lines; each value must be on one line")
        if ARROW in value:
            raise ValueError(f"task {name!r}: {value!r} contains {ARROW!r}, which separates input from output "
                             f"in prompts; values must not contain it")
    return pair[0].strip(), pair[1].strip()


def load_task_file(path: str | Path) -> Task:
    """A custom task named for its file: CSV with an `input,output` header, a JSON list of [input, output]
    pairs, or a JSON object {input: output}; validated like `make_task`."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8-sig")  # -sig: tolerate the byte-order mark spreadsheets write
    except (OSError, UnicodeDecodeError) as e:
        raise ValueError(f"cannot read task file {str(path)!r}: {getattr(e, 'strerror', None) or e}") from None
    if path.suffix.lower() == ".csv":
        pairs = _csv_pairs(path, text)
    elif path.suffix.lower() == ".json":
        try:
            pairs = json.loads(text)
        except json.JSONDecodeError as e:
            raise ValueError(f"task file {str(path)!r} is not valid JSON: {e}") from None
        if not isinstance(pairs, list | dict):
            raise ValueError(f"task file {str(path)!r} must hold a JSON list of [input, output] pairs or an "
                             f"object {{input: output}}, got a JSON {type(pairs).__name__}")
    else:
        raise ValueError(f"task file {str(path)!r} has unknown format {path.suffix!r}; valid formats: .csv (with "
                         f"an input,output header), .json (list of [input, output] pairs, or {{input: output}})")
    return make_task(path.stem, pairs, "custom", description=f"from {path.name}")


def _csv_pairs(path: Path, text: str) -> list[tuple[str, str]]:
    rows = [(n, row) for n, row in enumerate(csv.reader(io.StringIO(text)), 1) if any(c.strip() for c in row)]
    header = [c.strip().lower() for c in rows[0][1]] if rows else []
    if header != ["input", "output"]:
        raise ValueError(f"task file {str(path)!r} must start with the header line `input,output`, "
                         f"got {','.join(header)!r}")
    for n, row in rows[1:]:
        if len(row) != 2:
            raise ValueError(f"task file {str(path)!r} line {n} has {len(row)} fields, expected 2 (input,output); "
                             f"quote values that contain commas")
    return [tuple(row) for _, row in rows[1:]]


def parse_pairs(text: str, arrow: str = ARROW) -> list[tuple[str, str]]:
    """Parse `input -> output` lines (blank lines ignored), as typed into a notebook text area."""
    pairs = []
    for lineno, line in enumerate(text.splitlines(), 1):
        if not line.strip():
            continue
        if arrow not in line:
            raise ValueError(f"line {lineno} has no {arrow!r}: {line!r}")
        x, y = line.split(arrow, 1)
        pairs.append((x.strip(), y.strip()))
    return pairs


def split_queries(task: Task, seed: int = 0, dev_fraction: float = 0.5) -> dict[str, list[tuple[str, str]]]:
    """Seeded disjoint dev/test pools of *query* pairs; demonstrations may come from either pool."""
    pairs = list(task.pairs)
    random.Random(f"{task.name}/{seed}/split").shuffle(pairs)
    n_dev = max(1, round(len(pairs) * dev_fraction))
    return {"dev": pairs[:n_dev], "test": pairs[n_dev:] or pairs[:n_dev]}


def check_episode_size(task: Task, k: int, n_dummies: int) -> None:
    """Raise ValueError unless the task has enough pairs for k demonstrations, the dummies and a query."""
    need = k + n_dummies + 1
    if len(task.pairs) < need:
        raise ValueError(
            f"task {task.name!r} has {len(task.pairs)} usable pairs; an episode needs {need} "
            f"({k} demonstrations + {n_dummies} dummy queries + 1 query)"
        )


def sample_episodes(
    task: Task, n: int, k: int = 5, n_dummies: int = 2, split: str = "test", seed: int = 0
) -> list[Episode]:
    """n seeded episodes: the query from the split's pool, demos and dummies from the other pairs."""
    check_episode_size(task, k, n_dummies)
    pools = split_queries(task, seed)
    if split not in pools:
        raise KeyError(f"unknown split {split!r}; valid splits: {', '.join(pools)}")
    rng = random.Random(f"{task.name}/{seed}/{split}/{k}/{n_dummies}")
    episodes = []
    for _ in range(n):
        query = rng.choice(pools[split])
        others = [p for p in task.pairs if p[0] != query[0]]
        chosen = rng.sample(others, k + n_dummies)
        episodes.append(
            Episode(
                demos=tuple(chosen[:k]),
                dummies=tuple(x for x, _ in chosen[k:]),
                query=query,
                task=task.name,
                spaced=task.spaced,
            )
        )
    return episodes
