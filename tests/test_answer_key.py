"""The instructor's kit: the course map in the README is the one the notebooks give, and a malformed exercise (no
stronger hint, a hint that gives the code away) is refused. The answer key itself runs every solution in
context on the installed kit: tests/test_installed_course.py."""

import re
from pathlib import Path

import nbformat
import pytest

from tv_utils import answer_key

ROOT = Path(__file__).resolve().parent.parent
pytestmark = pytest.mark.tiny


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
