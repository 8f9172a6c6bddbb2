"""The notebooks' one-line set-up and every live fallback for a model with no stored results (tiny Llama)."""

import pandas as pd
import pytest

from tv_utils import course, experiments, store
from tv_utils.protocol import best_mean_layer

pytestmark = pytest.mark.tiny


@pytest.fixture
def no_stored_results(monkeypatch, tmp_path):
    """Neither a results folder nor the committed results hold anything."""
    monkeypatch.setenv("TV_UTILS_RESULTS", str(tmp_path))
    monkeypatch.setattr(store, "FIGURES", tmp_path)


def test_setup_reads_L_from_the_stored_run(gemma, capsys):
    per_layer = store.precomputed("reproduce_gemma3-270m_per_layer")
    model, L = course.setup("gemma3-270m")
    assert L == int(per_layer.groupby("layer")["dev_acc"].mean().idxmax())
    assert "best mean dev layer in the stored reproduce run" in capsys.readouterr().out


def test_every_fallback_runs_on_a_model_without_results(tiny_llama, no_stored_results):
    tasks = experiments.quick_tasks(tiny_llama)
    assert len(tasks) == 4 and "en_fr" not in tasks  # one token per character: no French word is one token
    results, per_layer = course.reproduce_tables(tiny_llama)
    assert len(results) == 3 and set(per_layer.layer) == set(range(tiny_llama.n_layers))
    L = experiments.default_layer(tiny_llama)
    depth, best = course.depth_tables(tiny_llama, per_layer)
    assert best.best_layer.tolist() == [best_mean_layer(per_layer)] and depth is per_layer
    tv, emb, scores, nearest = course.geometry(tiny_llama, L)
    assert tv.saved_layers[1] == L or L in tv.saved_layers
    assert set(emb.layer) == {L} and len(nearest)
    table = course.conflict(tiny_llama)
    by_layer = course.conflict_by_layer(tiny_llama)
    assert set(by_layer.layer) == set(range(tiny_llama.n_layers)) and {"paper_layer", "override_layer"} <= set(by_layer)
    assert {"task_a", "task_b", "method", "acc_a", "acc_b"} <= set(table.columns)
    top, ranks = course.vocab(tiny_llama)
    assert set(ranks.task) == set(experiments.quick_tasks(tiny_llama)) and "token" in top  # no word tokens here
    words = course.task_words(tiny_llama)
    assert words.task.tolist() == results.task.tolist() and (words.layer >= words.best_layer).all()
    mix = course.interpolation(tiny_llama, L, "list_last", "list_first")
    assert len(mix)
    library = course.library(tiny_llama, L)
    assert library.layer == L and len(library.vectors) == 3
    assert set(course.reuse_cost(tiny_llama, library).method) == {"ICL", "stored theta"}
    assert isinstance(course.robustness(tiny_llama, L), pd.DataFrame)
    run, several = course.function_vectors(tiny_llama)
    assert len(run.table) == 2 and run.k in (2, 5) and set(several.task) == {run.table.task[0]}


def test_function_vectors_read_the_stored_run(gemma):
    run, several = course.function_vectors(gemma)
    stored = store.precomputed("function_vectors_gemma3-270m")
    assert run.table.equals(stored) and len(run.heads) == run.k and set(several.task) == {"en_es", "next_letter",
                                                                                         "prev_letter"}


def test_quick_tasks_say_when_the_tokenizer_scores_none(tiny_llama, monkeypatch):
    monkeypatch.setattr(experiments, "usable_task",
                        lambda task, tok: (task.__class__(task.name, task.category, ()), {}))
    with pytest.raises(ValueError, match="scores none of the tasks"):
        experiments.quick_tasks(tiny_llama)


def test_results_stem_keeps_dots_in_model_names(tmp_path):
    stem = store.results_stem("reproduce", "Qwen/Qwen2.5-0.5B", tmp_path)
    assert stem == tmp_path / "reproduce_Qwen_Qwen2.5-0.5B"
    assert store.suffixed(stem, ".csv").name == "reproduce_Qwen_Qwen2.5-0.5B.csv"
    assert store.stem_of(store.suffixed(stem, ".safetensors"), ".safetensors") == stem


def test_the_two_model_comparison_reads_the_committed_tables():
    summary = course.compare_models("summary")
    assert set(summary.index.get_level_values(0)) == set(course.COMPARED)
    for cell in summary.to_numpy().ravel():  # "value [lo, hi]": every value inside its own interval
        value, lo, hi = map(float, cell.replace("[", "").replace("]", "").replace(",", "").split())
        assert lo <= value <= hi, cell
    layers = course.compare_models("layers")
    assert len(layers) == 18 and set(layers.columns.get_level_values(0)) == set(course.COMPARED)
    conflict = course.compare_models("conflict")
    assert len(conflict) == 10 and conflict.stack().str.contains(r"\] @\d+$").all()
    with pytest.raises(ValueError, match="valid: summary, layers, conflict"):
        course.compare_models("claims")
    with pytest.raises(ValueError, match="no stored reproduce results for nobody"):
        course.compare_models("summary", models=["nobody"])
