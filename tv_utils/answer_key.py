"""The course's exercises as data, for instructors: the course map, and the answer key run in context.

Every exercise in notebooks/ has one shape: a markdown cell (heading, ratings and time, task, two-level hint),
the stub, the check call, and the folded solution. `exercises` reads them (and rejects a malformed one),
`course_map` lists them per notebook, and `answer_key` writes the notebooks with each stub replaced by its
solution and runs them top to bottom, so the solutions are tested where students meet them.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

from . import store

__all__ = ["answer_key", "CHECK", "CORRECT", "course_map", "Exercise", "exercises", "HEADING", "HINTS", "NEEDS",
           "notebook_paths", "NOTEBOOKS", "READING_MINUTES", "SOLUTION", "STUB", "with_solutions"]

NOTEBOOKS = Path(__file__).resolve().parent.parent / "notebooks"  # a source checkout's course
HEADING = re.compile(r"^### Exercise (\d+)\.(\d+) · (.+)\n\*\*Difficulty ([1-5])/5\*\* (🔴+)⚪* · "
                     r"\*\*Importance ([1-5])/5\*\* (🔵+)⚪* · about (\d+) min\n")
HINTS = ("<details><summary>💡 Hint</summary>", "<details><summary>💡 Stronger hint</summary>")
STUB = re.compile(r"^def (\w+)\(.*\):\n    raise NotImplementedError  # YOUR CODE HERE$")
CHECK = re.compile(r"^exercises\.(check_\w+)\((\w+)(, .*)?\);$")
SOLUTION = re.compile(r"^<details><summary>✅ Solution</summary>\n\n```python\n(.*)\n```\n\n</details>$", re.S)
CORRECT = "✅ Correct:"
READING_MINUTES = 20  # reading and running a notebook's cells, besides its exercises
NEEDS = {"01": "Python, PyTorch tensors", "02": "1", "03": "2", "04": "2, 3", "05": "2, 3", "06": "2, 3",
         "07": "2, 3", "08": "2, 3"}  # the notebooks each one builds on


@dataclass(frozen=True)
class Exercise:
    notebook: str  # file stem, e.g. "03_layer_sweep"
    number: str  # "3.1"
    title: str
    difficulty: int  # 1-5
    importance: int  # 1-5
    minutes: int  # estimated time
    checker: str  # the exercises.check_* function
    function: str  # the function the student writes
    solution: str  # its code
    cell: int  # index of the stub cell


def notebook_paths(folder: str | Path | None = None) -> list[Path]:
    folder = Path(folder) if folder else NOTEBOOKS
    paths = sorted(folder.glob("[0-9][0-9]_*.ipynb"))
    if not paths:
        raise ValueError(f"no course notebooks (NN_*.ipynb) in {folder}; pass the notebooks folder of a checkout")
    return paths


def exercises(path: str | Path) -> list[Exercise]:
    """The exercises of one notebook, in order; ValueError if one is not in the course's shape."""
    import nbformat

    path = Path(path)
    cells = nbformat.read(path, as_version=4).cells
    found = []
    for i, cell in enumerate(cells):
        if cell.cell_type != "markdown" or not cell.source.startswith("### Exercise"):
            continue
        head = HEADING.match(cell.source)
        where = f"{path.name}, {cell.source.splitlines()[0]!r}"
        if not head:
            raise ValueError(f"{where}: heading, ratings or time not in the shape of {HEADING.pattern!r}")
        if int(head[4]) != len(head[5]) or int(head[6]) != len(head[7]) or int(head[1]) != int(path.name[:2]):
            raise ValueError(f"{where}: ratings disagree with their emoji, or the number with the notebook")
        if not all(h in cell.source for h in HINTS):
            raise ValueError(f"{where}: needs a hint and a stronger hint")
        hints = cell.source[cell.source.index(HINTS[0]):]
        after = cells[i + 1:i + 4]
        if [c.cell_type for c in after] != ["code", "code", "markdown"]:
            raise ValueError(f"{where}: must be followed by the stub, the check call and the solution")
        stub, check, solution = (STUB.match(after[0].source), CHECK.match(after[1].source),
                                 SOLUTION.match(after[2].source))
        if not (stub and check and solution) or stub[1] != check[2] or f"def {stub[1]}(" not in solution[1]:
            raise ValueError(f"{where}: stub, check call or solution not in the shape")
        leaked = [line.strip() for line in solution[1].splitlines()[1:] if len(line.strip()) >= 20
                  and line.strip() in hints]
        leaked += [span for span in re.findall(r"`([^`\n]+)`", hints) if len(span) >= 40 and span in solution[1]]
        if leaked:
            raise ValueError(f"{where}: a hint gives away the solution's code: {leaked[0]!r}")
        found.append(Exercise(path.stem, f"{head[1]}.{head[2]}", head[3], int(head[4]), int(head[6]), int(head[8]),
                              check[1], stub[1], solution[1], i + 1))
    return found


def course_map(folder: str | Path | None = None) -> str:
    """The course as a markdown table: each notebook's objectives, prerequisites, estimated time and exercises."""
    import nbformat

    rows = ["| Notebook | You will | Needs | Time | Exercises (difficulty, importance, time) |",
            "|---|---|---|---|---|"]
    for path in notebook_paths(folder):
        intro = nbformat.read(path, as_version=4).cells[0].source
        title = intro.splitlines()[0].lstrip("# ")
        objectives = intro.split("**Learning objectives**", 1)[-1]
        bullets = [re.sub(r"\s+", " ", b).strip() for b in re.split(r"\n- ", "\n" + objectives.strip()) if b.strip()]
        found = exercises(path)
        minutes = READING_MINUTES + sum(e.minutes for e in found)
        listed = "<br>".join(f"{e.number} {e.title} ({e.difficulty}/5, {e.importance}/5, {e.minutes} min)"
                             for e in found)
        rows.append(f"| [{title}](notebooks/{path.name}) | {'<br>'.join(bullets)} | {NEEDS.get(path.name[:2], '')} | "
                    f"~{minutes} min | {listed} |")
    return "\n".join(rows)


def with_solutions(path: str | Path):
    """The notebook with every exercise stub replaced by its solution (a new notebook node)."""
    import nbformat

    nb = nbformat.read(path, as_version=4)
    for exercise in exercises(path):
        nb.cells[exercise.cell].source = exercise.solution
    return nb


def answer_key(out_dir: str | Path, folder: str | Path | None = None, only=None, timeout: int = 600,
               kernel: str | None = None) -> list[Path]:
    """Write each notebook with its solutions filled in to `out_dir`, executed top to bottom (kernel started
    in the notebooks' folder); ValueError naming every check that did not print "Correct". The solutions that
    pass are kept in a folder of this run (not yours), so later notebooks run the key's own pipeline.
    kernel: a Jupyter kernel's name, e.g. one for a hosted service's environment (default: the notebooks' own)."""
    import os
    import tempfile

    import nbformat
    from nbclient import NotebookClient
    from tqdm.auto import tqdm

    paths = [p for p in notebook_paths(folder) if not only or p.name[:2] in only or p.stem in only]
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    written, failed = [], []
    before = os.environ.get("TV_UTILS_MINE")
    os.environ["TV_UTILS_MINE"] = tempfile.mkdtemp(prefix="answer_key_mine_")  # the kernels inherit it
    try:
        for path in tqdm(paths, desc="answer key", unit="notebook"):
            nb = with_solutions(path)
            NotebookClient(nb, timeout=timeout, resources={"metadata": {"path": str(path.parent)}},
                           **({"kernel_name": kernel} if kernel else {})).execute()
            for exercise in exercises(path):
                printed = "".join(o.get("text", "") for o in nb.cells[exercise.cell + 1].get("outputs", []))
                if not printed.startswith(CORRECT):
                    failed.append(f"{exercise.number} ({exercise.function}): {printed.strip() or 'no output'}")
            written.append(store.write_atomic(out_dir / path.name, nbformat.writes(nb) + "\n"))
    finally:
        if before is None:
            os.environ.pop("TV_UTILS_MINE")
        else:
            os.environ["TV_UTILS_MINE"] = before
    if failed:
        raise ValueError(f"{len(failed)} solutions did not pass their checks in context: " + "; ".join(failed))
    return written

