"""The paper's 18 tasks, user-defined tasks, and seeded sampling of ICL episodes.

A task is a list of (input, output) pairs. Knowledge tasks score a prediction on the answer's first
token (their answers may span several tokens); every other task keeps only pairs whose answer is a
single token for the model at hand (see `prompts.usable_task`). Data lives in `tv_utils/data/`.
A user's task may accept several answers to an input (`Task.accepted`): demonstrations show the first, and
a prediction matching the first token of any of them is a hit (`prompts.accepted_ids`).
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

__all__ = ["ARROW", "CATEGORIES", "check_episode_size", "Episode", "get_task", "KNOWN_CATEGORIES", "load_task_dir",
           "load_task_file", "make_task", "parse_pairs", "sample_episodes", "SAMPLINGS", "split_queries", "Task",
           "TASK_FILE_FORMATS", "TASK_NAMES", "tasks_in"]

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
    # (input, every accepted answer) for the inputs with more than one; `pairs` holds each input's first answer
    accepted: tuple[tuple[str, tuple[str, ...]], ...] = ()

    def answers(self, x: str) -> tuple[str, ...]:
        """Every answer accepted for input x, the one demonstrations show first."""
        return dict(self.accepted).get(x) or (dict(self.pairs)[x],)

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
    "location_continent": ("knowledge", "Kenya -> Africa",
                           lambda: _columns("location_continent.csv", "location", "continent")),
    "location_religion": ("knowledge", "Mecca -> Islam",
                          lambda: _columns("location_religion.csv", "location", "religion")),
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
    """A task from (input, output) pairs of strings, or a dict {input: output}. An output may also be a list of
    accepted answers: demonstrations show the first, and a prediction matching the first token of any is a hit.
    Inputs must be unique, and values non-empty, on one line and free of `->`, since each pair becomes one
    `example:{x}->{y}` line."""
    if category not in KNOWN_CATEGORIES:
        raise ValueError(f"task {name!r} has unknown category {category!r}; valid categories: "
                         f"{', '.join(KNOWN_CATEGORIES)}")
    if isinstance(pairs, Mapping):
        pairs = pairs.items()
    if isinstance(pairs, str) or not isinstance(pairs, Iterable):
        raise ValueError(f"task {name!r}: pairs must be a list of (input, output) pairs of strings, got {pairs!r}")
    checked = [_checked_pair(name, p) for p in pairs]
    if len(checked) < 2:
        raise ValueError(f"task {name!r} needs at least 2 (input, output) pairs, got {len(checked)}")
    empty = [(x, ys[0] if len(ys) == 1 else list(ys)) for x, ys in checked if not x or not all(ys)]
    if empty:
        raise ValueError(f"task {name!r} has empty inputs or outputs: {empty[:3]}")
    inputs = [x for x, _ in checked]
    dupes = sorted({x for x in inputs if inputs.count(x) > 1})
    if dupes:
        raise ValueError(f"task {name!r} has repeated inputs (one input, one answer): {dupes[:5]}")
    accepted = tuple((x, ys) for x, ys in checked if len(ys) > 1)
    return Task(name=name, category=category, pairs=tuple((x, ys[0]) for x, ys in checked), description=description,
                accepted=accepted)


def _checked_pair(name: str, pair) -> tuple[str, tuple[str, ...]]:
    """An (input, output) pair of one-line strings without `->`, stripped of surrounding white space, as (input,
    answers); the output may be a list of accepted answers (repeats dropped, first kept first)."""
    if isinstance(pair, str) or not isinstance(pair, Sequence) or len(pair) != 2:
        raise ValueError(f"task {name!r}: each pair must be an (input, output) pair of strings, got {pair!r}")
    x, y = pair
    several = isinstance(y, list | tuple)
    if several and not y:
        raise ValueError(f"task {name!r}: input {x!r} has an empty list of answers; give at least one")
    for value in (x, *(y if several else [y])):
        if not isinstance(value, str):
            raise ValueError(f"task {name!r}: inputs and outputs must be strings, got {value!r} "
                             f"({type(value).__name__}) in {tuple(pair)!r}")
        if "\n" in value or "\r" in value:
            raise ValueError(f"task {name!r}: {value!r} spans several lines; each value must be on one line")
        if ARROW in value:
            raise ValueError(f"task {name!r}: {value!r} contains {ARROW!r}, which separates input from output "
                             f"in prompts; values must not contain it")
    answers = tuple(dict.fromkeys(a.strip() for a in (y if several else [y])))
    return x.strip(), answers


TASK_FILE_FORMATS = (".csv (with an input,output header), .json (a list of [input, output] pairs, a list of "
                     "{\"input\": ..., \"output\": ...} objects whose output may be a list of accepted answers, "
                     "or {input: output})")


def load_task_file(path: str | Path) -> Task:
    """A custom task named for its file: CSV with an `input,output` header, or JSON: a list of [input, output]
    pairs, a list of {"input": ..., "output": ...} objects (Todd et al.'s function-vector tasks; an output may be
    a list of accepted answers), or an object {input: output}; validated like `make_task`."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8-sig")  # -sig: tolerate the byte-order mark spreadsheets write
    except (OSError, UnicodeDecodeError) as e:
        raise ValueError(f"cannot read task file {str(path)!r}: {getattr(e, 'strerror', None) or e}") from None
    if path.suffix.lower() == ".csv":
        pairs = _csv_pairs(path, text)
    elif path.suffix.lower() == ".json":
        try:
            data = json.loads(text)
        except json.JSONDecodeError as e:
            raise ValueError(f"task file {str(path)!r} is not valid JSON: {e}") from None
        pairs = _json_pairs(path, data)
    else:
        raise ValueError(f"task file {str(path)!r} has unknown format {path.suffix!r}; valid formats: "
                         f"{TASK_FILE_FORMATS}")
    return make_task(path.stem, pairs, "custom", description=f"from {path.name}")


def _json_pairs(path: Path, data) -> list | dict:
    """The pairs of a task file's JSON: [[input, output], ...], [{"input": ..., "output": ...}, ...] or
    {input: output}; objects are read here, item by item, so that errors name the item."""
    if not isinstance(data, list | dict):
        raise ValueError(f"task file {str(path)!r} must hold a JSON list of [input, output] pairs or an object "
                         f"{{input: output}}, or a list of {{\"input\": ..., \"output\": ...}} objects, got a JSON "
                         f"{type(data).__name__}")
    if not data:
        raise ValueError(f"task file {str(path)!r} holds an empty JSON {'list' if isinstance(data, list) else 'object'}"
                         f"; a task needs at least 2 (input, output) pairs")
    if isinstance(data, dict) or not any(isinstance(item, dict) for item in data):
        return data
    pairs = []
    for n, item in enumerate(data, 1):
        where = f"task file {str(path)!r} item {n}"
        if not isinstance(item, dict):
            raise ValueError(f"{where} is {json.dumps(item)[:60]}; in a list of objects every item must be "
                             f"{{\"input\": ..., \"output\": ...}}")
        missing = [key for key in ("input", "output") if key not in item]
        if missing:
            raise ValueError(f"{where} has no {' and no '.join(repr(k) for k in missing)} key "
                             f"(its keys: {', '.join(map(repr, item)) or 'none'}); each item needs \"input\" and "
                             f"\"output\"")
        x, y = item["input"], item["output"]
        if not isinstance(x, str):
            raise ValueError(f"{where}: input must be a string, got {json.dumps(x)}")
        if not (isinstance(y, str) or isinstance(y, list) and y and all(isinstance(a, str) for a in y)):
            raise ValueError(f"{where}: output must be a string or a non-empty list of strings (accepted answers), "
                             f"got {json.dumps(y)}")
        pairs.append((x, y))
    return pairs


def load_task_dir(path: str | Path) -> list[Task]:
    """One custom task per task file (.json or .csv, as `load_task_file` reads them) in a folder, by file name."""
    path = Path(path)
    if not path.is_dir():
        raise ValueError(f"task directory {str(path)!r} is not a directory" if path.exists() else
                         f"cannot read task directory {str(path)!r}: No such file or directory")
    paths = sorted(p for p in path.iterdir() if p.suffix.lower() in (".json", ".csv") and p.is_file())
    if not paths:
        raise ValueError(f"task directory {str(path)!r} holds no task files (.json or .csv)")
    stems = [p.stem for p in paths]
    twins = sorted({s for s in stems if stems.count(s) > 1})
    if twins:
        raise ValueError(f"task directory {str(path)!r} has several files for task(s) {', '.join(twins)}; keep one "
                         f"file per task name")
    return [load_task_file(p) for p in paths]


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


SAMPLINGS = ("kit", "paper")  # how `sample_episodes` draws queries and dummies


def sample_episodes(
    task: Task, n: int, k: int = 5, n_dummies: int = 2, split: str = "test", seed: int = 0, sampling: str = "kit"
) -> list[Episode]:
    """n seeded episodes.

    sampling="kit": the query from the split's pool (`split_queries`: dev and test ask disjoint halves), the
    demonstrations and dummies from the other pairs, all distinct. sampling="paper", as the official code
    (task.py `create_dataset`, task_vectors.py `get_single_context_task_hiddens`): every episode draws its query
    afresh from all inputs, whatever the split, its demonstrations from the other inputs, and its dummies from
    all inputs but the query (so a dummy may repeat a demonstration's input)."""
    if sampling not in SAMPLINGS:
        raise ValueError(f"unknown sampling {sampling!r}; valid samplings: {', '.join(SAMPLINGS)}")
    check_episode_size(task, k, n_dummies)
    pools = split_queries(task, seed)
    if split not in pools:
        raise KeyError(f"unknown split {split!r}; valid splits: {', '.join(pools)}")
    paper = sampling == "paper"
    rng = random.Random(f"{task.name}/{seed}/{split}/{k}/{n_dummies}" + ("/paper" if paper else ""))
    episodes = []
    for _ in range(n):
        query = rng.choice(task.pairs if paper else pools[split])
        others = [p for p in task.pairs if p[0] != query[0]]
        if paper:
            demos = rng.sample(others, k)
            dummies = rng.sample([x for x, _ in others], n_dummies)
        else:
            chosen = rng.sample(others, k + n_dummies)
            demos, dummies = chosen[:k], [x for x, _ in chosen[k:]]
        episodes.append(Episode(demos=tuple(demos), dummies=tuple(dummies), query=query, task=task.name,
                                spaced=task.spaced))
    return episodes
