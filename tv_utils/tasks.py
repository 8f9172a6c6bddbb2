"""The paper's 18 tasks, user-defined tasks, and seeded sampling of ICL episodes.

A task is a list of (input, output) pairs. Knowledge tasks score a prediction on the answer's first
token (their answers may span several tokens); every other task keeps only pairs whose answer is a
single token for the model at hand (see `prompts.answer_token_ids`). Data lives in `tv_utils/data/`.
"""

from __future__ import annotations

import csv
import random
import string
from dataclasses import dataclass, field
from functools import lru_cache
from importlib.resources import files

CATEGORIES = ("algorithmic", "translation", "linguistic", "knowledge")


@dataclass(frozen=True)
class Task:
    name: str
    category: str
    pairs: tuple[tuple[str, str], ...]
    description: str = ""

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
    """A task from (input, output) pairs; inputs must be unique and both sides non-empty."""
    pairs = tuple((str(x).strip(), str(y).strip()) for x, y in pairs)
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


def parse_pairs(text: str, arrow: str = "->") -> list[tuple[str, str]]:
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


def sample_episodes(
    task: Task, n: int, k: int = 5, n_dummies: int = 2, split: str = "test", seed: int = 0
) -> list[Episode]:
    """n seeded episodes: the query from the split's pool, demos and dummies from the other pairs."""
    need = k + n_dummies + 1
    if len(task.pairs) < need:
        raise ValueError(
            f"task {task.name!r} has {len(task.pairs)} usable pairs; an episode needs {need} "
            f"({k} demonstrations + {n_dummies} dummy queries + 1 query)"
        )
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
            )
        )
    return episodes
