"""The instructor's kit: the course map in the README is the one the notebooks give, a malformed exercise (no
stronger hint, a hint that gives the code away) is refused, and the answer key runs every solution in context."""

import re
from pathlib import Path

import nbformat
import pytest

from tv_utils import answer_key

ROOT = Path(__file__).resolve().parent.parent
pytestmark = pytest.mark.tiny  # but the answer key itself, which runs every notebook


def test_readme_course_map_is_the_generated_one():
    readme = (ROOT / "README.md").read_text()
    stored = re.search(r"<!-- course map: python -m tv_utils course -->\n(.*?)\n<!-- end of course map -->", readme,
                       re.S)
    assert stored and stored[1] == answer_key.course_map(), "run `python -m tv_utils course` and paste its table"
    n_exercises = sum(len(answer_key.exercises(p)) for p in answer_key.notebook_paths())
    assert stored[1].count(" min)") == n_exercises  # every exercise listed with its time


def _one_exercise_notebook(tmp_path, edit) -> Path:
    path = ROOT / "notebooks" / "03_layer_sweep.ipynb"
    nb = nbformat.read(path, as_version=4)
    cell = next(c for c in nb.cells if c.source.startswith("### Exercise 3.3"))
    cell.source = edit(cell.source)
    out = tmp_path / path.name
    nbformat.write(nb, out)
    return out


@pytest.mark.parametrize("edit, why", [
    (lambda s: s.replace("💡 Stronger hint", "💡 More"), "needs a hint and a stronger hint"),
    (lambda s: s.replace("A pandas `groupby` over the layer column.",
                         '`mean = per_layer.groupby("layer")["dev_acc"].mean()`'), "gives away the solution's code"),
    (lambda s: s.replace(" · about 5 min", ""), "heading, ratings or time"),
    (lambda s: s.replace("**Difficulty 1/5**", "**Difficulty 2/5**"), "ratings disagree with their emoji"),
])
def test_malformed_exercises_are_refused(tmp_path, edit, why):
    path = _one_exercise_notebook(tmp_path, edit)
    with pytest.raises(ValueError, match=re.escape(why)):
        answer_key.exercises(path)


@pytest.mark.notebooks
@pytest.mark.model
def test_answer_key_runs_every_solution_in_its_notebook(tmp_path):
    """All eight notebooks, solutions filled in, run top to bottom: every check cell says Correct (on the
    notebook's own model and data, not the tests' tiny one)."""
    written = answer_key.answer_key(tmp_path / "key")
    assert [p.name for p in written] == [p.name for p in answer_key.notebook_paths()]
    for path in written:
        nb = nbformat.read(path, as_version=4)
        for exercise in answer_key.exercises(ROOT / "notebooks" / path.name):
            assert nb.cells[exercise.cell].source == exercise.solution
            printed = "".join(o.get("text", "") for o in nb.cells[exercise.cell + 1].outputs)
            assert printed.startswith("✅ Correct:"), (path.name, exercise.number, printed)
    # notebook 3's pipeline from the solutions alone (notebook 2's functions kept, 3's own): the stored row
    nb = nbformat.read(tmp_path / "key" / "03_layer_sweep.ipynb", as_version=4)
    printed = next("".join(o.get("text", "") for o in c.outputs) for c in nb.cells if "fns.choose_layer(" in c.source)
    assert all(f"{step}: yours" in printed for step in ("read_theta", "mean_theta", "patch_theta", "choose_layer"))
    assert printed.rstrip().endswith("the same row"), printed
