"""Analyses on a tiny random Llama: shapes, invariants (alpha=0/1, save/load, logit lens), bad input."""

from dataclasses import replace

import numpy as np
import pandas as pd
import pytest
import torch

from tv_utils import interventions as iv
from tv_utils.analyses import beyond, conflict, geometry, vocab
from tv_utils.experiments import default_layer
from tv_utils.protocol import KIT

pytestmark = pytest.mark.tiny

P = replace(KIT, k=3, n_dev=6, n_test=6)  # the analyses here run the kit's conventions (their default)


def test_conflicting_tasks_table(tiny_llama):
    table = conflict.conflicting_tasks(tiny_llama, [("next_letter", "to_upper")], n=6, layer=1, protocol=P)
    assert list(table.method) == [conflict.REGULAR, conflict.CONFLICT, conflict.OVERRIDE]
    quick = conflict.conflicting_tasks(tiny_llama, [("next_letter", "to_upper")], n=6, layer=1, protocol=P,
                                       override=False)  # the live widget's table: the same rows but the override
    pd.testing.assert_frame_equal(quick, table[table.method != conflict.OVERRIDE].reset_index(drop=True))
    assert table[["acc_a", "acc_b"]].apply(lambda c: c.between(0, 1)).all().all()
    with pytest.raises(KeyError, match="valid tasks"):
        conflict.conflicting_tasks(tiny_llama, [("next_letter", "to_uper")], n=6, layer=1, protocol=P)
    with pytest.raises(ValueError, match="share only 0 inputs"):
        conflict.conflicting_tasks(tiny_llama, [("en_fr", "to_upper")], n=6, layer=1, protocol=P)
    with pytest.raises(ValueError, match="valid layers are 0..3"):
        conflict.conflicting_tasks(tiny_llama, [("next_letter", "to_upper")], n=6, layer=9, protocol=P)


def test_run_writes_the_table_it_returns(tiny_llama, tmp_path):
    from tv_utils import store

    table = conflict.run(tiny_llama, [("next_letter", "to_upper")], n=6, layer=1, out_dir=tmp_path, figures=False)
    stem = store.results_stem("conflict", tiny_llama.name, tmp_path)
    path, by_layer, episodes = (store.suffixed(stem, s) for s in (".csv", "_by_layer.csv", "_episodes.csv"))
    assert sorted(tmp_path.iterdir()) == sorted([path, by_layer, episodes])
    pd.testing.assert_frame_equal(pd.read_csv(path), table.round(4), check_dtype=False)
    hits, curves = pd.read_csv(episodes), pd.read_csv(by_layer)
    assert set(hits.hit) <= {0, 1} and set(hits.split) == {"dev", "test"}
    test = hits[hits.split == "test"]
    for row in table.itertuples():  # each Table 2 row is the mean of its test episodes at its layer
        method = conflict.CONFLICT if row.method == conflict.OVERRIDE else row.method
        mine = test[(test.method == method) & ((test.layer == row.layer) | test.layer.isna())]
        assert row.acc_a == mine[mine.scored_on == "A"].hit.mean()
        assert row.acc_b == mine[mine.scored_on == "B"].hit.mean()
        assert row.acc_a_lo <= row.acc_a <= row.acc_a_hi
    assert table.loc[table.method == conflict.CONFLICT, "layer"].tolist() == [1]  # --layer replaces the paper's rule
    override = curves.override_layer.iloc[0]  # the best override layer is the top *dev* accuracy on B
    assert curves.dev_acc_b.max() == curves.loc[curves.layer == override, "dev_acc_b"].iloc[0]
    assert list(curves.layer) == list(range(tiny_llama.n_layers)) and (curves.n == 6).all()


def test_interpolation_endpoints_are_the_pure_vectors(tiny_llama):
    table = beyond.interpolate(tiny_llama, "list_last", "list_first", alphas=[0, 0.5, 1], layer=2, n=6,
                               scales=[1.0], protocol=P)
    alpha = table[table.kind == "alpha"].set_index("value")
    scale_one = table[(table.kind == "scale") & (table.value == 1.0)].iloc[0]
    assert alpha.loc[1.0, "acc_a"] == scale_one.acc_a and alpha.loc[1.0, "acc_b"] == scale_one.acc_b
    with pytest.raises(ValueError, match=r"alpha must be in \[0, 1\]"):
        beyond.interpolate(tiny_llama, "list_last", "list_first", alphas=[1.5], layer=2, protocol=P)


def test_patch_shared_with_mix_equals_pure_vector(tiny_llama):
    seqs = tiny_llama.encode(["example:a->", "example:bc->"])
    a, b = torch.randn(2, 32) * 5
    for alpha, pure in ((1.0, a), (0.0, b)):
        mixed = beyond.patch_shared(tiny_llama, seqs, alpha * a + (1 - alpha) * b, 2)
        expected = iv.patched_logits(tiny_llama, seqs, pure, 2).argmax(-1)
        assert torch.equal(mixed, expected)


def test_library_round_trip(tiny_llama, tmp_path):
    lib = beyond.build_library(tiny_llama, ["next_letter", "to_upper"], layer=2, n=4, protocol=P)
    path = lib.save(tmp_path / "lib")
    loaded = beyond.Library.load(path)
    assert loaded.layer == 2 and loaded.meta["to_upper"]["n_episodes"] == 4
    for task in lib.vectors:
        assert torch.equal(loaded.vectors[task], lib.vectors[task])
        inputs = ["a", "q", "m"]
        assert beyond.apply_library(tiny_llama, loaded, task, inputs) == beyond.apply_library(
            tiny_llama, lib, task, inputs)
    with pytest.raises(KeyError, match="holds: next_letter, to_upper"):
        loaded.get("en_fr")
    with pytest.raises(ValueError, match="empty"):
        beyond.Library("m", 0, {}).save(tmp_path / "empty")
    cost = beyond.reuse_cost(tiny_llama, loaded, ["next_letter"], n=6, protocol=P)
    icl, stored = cost.set_index("method").loc[["ICL", "stored theta"], "prompt_tokens"]
    assert icl > 3 * stored


def test_geometry_scores_and_embeddings(tiny_llama):
    tv = geometry.collect_task_vectors(tiny_llama, ["next_letter", "to_upper", "list_first"], n=8, protocol=P,
                                       progress=False)
    assert tv.theta.shape == (24, 4, 32) and len(tv.meta) == 24
    scores = geometry.geometry_scores(tv)
    assert list(scores.layer) == [0, 1, 2, 3] and scores.knn_accuracy.between(0, 1).all()
    emb = geometry.embeddings(tv, [2], methods=("tsne",))
    assert emb.shape[0] == 24 and np.isfinite(emb[["x", "y"]]).all().all()
    dist = geometry.distance_table(tv, 2)
    assert len(dist) == 24 * 23 // 2 and set(dist.pair) == {"within task", "between tasks"}
    assert len(geometry.nearest_tasks(tv, 2)) == 3


def test_geometry_separates_clusters():
    """kNN and silhouette recognise well-separated clusters, and fail on pure noise."""
    rng = np.random.default_rng(0)
    centres = rng.normal(size=(3, 16)) * 10
    x = np.concatenate([c + rng.normal(size=(10, 16)) for c in centres])
    meta = __import__("pandas").DataFrame({"task": np.repeat(["a", "b", "c"], 10)})
    clustered = geometry.TaskVectors("m", torch.tensor(x)[:, None], meta)
    noise = geometry.TaskVectors("m", torch.tensor(rng.normal(size=(30, 16)))[:, None], meta)
    good, bad = geometry.geometry_scores(clustered).iloc[0], geometry.geometry_scores(noise).iloc[0]
    assert good.knn_accuracy == 1.0 and good.silhouette > 0.5
    assert bad.knn_accuracy < 0.7 and bad.silhouette < 0.1


def test_projection_of_last_layer_is_the_models_own_output(tiny_llama):
    seqs = tiny_llama.encode(["example:ab->", "x->"])
    states = iv.capture(tiny_llama, seqs)
    logp = vocab.project(tiny_llama, states[:, -1])
    expected = torch.log_softmax(iv.patched_logits(tiny_llama, seqs, None, None), -1)
    torch.testing.assert_close(logp, expected, atol=1e-4, rtol=0)


def test_vocabulary_projection_tables(tiny_llama):
    top, ranks = vocab.vocabulary_projection(tiny_llama, ["next_letter"], layers=[1, 3], n=4, k=3, protocol=P)
    assert set(ranks.layer) == {1, 3} and ranks.top1.between(0, 1).all()
    assert set(top.columns) >= {"task", "layer", "rank", "token", "prob", "specific", "shared_by"}
    assert top.empty  # a char tokenizer has no word-like tokens (two letters or more) to list


def test_robustness_conditions(tiny_llama):
    table = beyond.robustness(tiny_llama, "next_letter", layer=2, n=6, sizes=(1, 2), protocol=P)
    assert list(table.condition) == ["θ from 1 other episode", "mean θ of 2 other episodes",
                                     "demos with shuffled answers", "own episode (paper)"]
    with pytest.raises(ValueError, match="valid layers"):
        beyond.robustness(tiny_llama, "next_letter", layer=-1, n=6, protocol=P)


def test_shuffled_demos_break_every_pair():
    from tv_utils.tasks import Episode

    ep = Episode(tuple((c, c.upper()) for c in "abcde"), ("x", "y"), ("q", "Q"))
    shuffled = beyond._shuffled(ep, np.random.default_rng(0))
    assert all(y != x.upper() for x, y in shuffled.demos)
    assert sorted(y for _, y in shuffled.demos) == list("ABCDE")


def test_task_vectors_save_and_load(tiny_llama, tmp_path):
    tv = geometry.collect_task_vectors(tiny_llama, ["next_letter", "to_upper"], n=4, protocol=P, progress=False)
    loaded = geometry.TaskVectors.load(tv.save(tmp_path / "tv", layers=[1, 3]))
    assert loaded.saved_layers == [1, 3] and loaded.meta.equals(tv.meta)
    torch.testing.assert_close(loaded.theta[:, 3], tv.theta[:, 3].half().float())


def test_results_are_written_atomically_with_normal_permissions(tmp_path):
    import os

    from tv_utils import store

    path = store.write_atomic(tmp_path / "sub" / "x.csv", "a,b\n")
    assert path.read_text() == "a,b\n" and os.stat(path).st_mode & 0o044  # group/other can read
    assert [p.name for p in path.parent.iterdir()] == ["x.csv"]  # no temporary file left


def test_saved_tables_read_back_tokens_as_text(tmp_path):
    from tv_utils import store

    df = pd.DataFrame({"token": ["None", "NA", "nan", "Paris"], "acc": [0.5, None, 1.0, 0.25]})
    store.save_table(df, tmp_path / "top.csv")
    back = store.precomputed("top", tmp_path)
    assert back["token"].tolist() == ["None", "NA", "nan", "Paris"]
    assert back["acc"].isna().tolist() == [False, True, False, False]
    assert store.precomputed("absent", tmp_path) is None


def test_default_layer_is_the_best_mean_dev_layer(tiny_llama, tmp_path):
    from tv_utils import store

    per_layer = pd.DataFrame({"layer": [0, 1, 2, 0, 1, 2], "dev_acc": [0.1, 0.3, 0.9, 0.2, 0.8, 0.1]})
    store.save_table(per_layer, tmp_path / f"reproduce_{tiny_llama.name.replace('/', '_')}_per_layer.csv")
    assert default_layer(tiny_llama, tmp_path) == 1  # means 0.15, 0.55, 0.50


def test_own_task_answers_batched_equal_the_step_by_step_run(tiny_llama):
    """The widget's batched own-task path (shared demonstrations run once, one pass for zero-shot and task vector,
    one unembedding product) gives the answers of the plain steps: theta from engine.episode_states, the queries
    patched by layer_sweep, ICL and zero-shot by next_tokens."""
    from tv_utils import engine
    from tv_utils.analyses import icl
    from tv_utils.prompts import DEFAULT_FORMAT as F, usable_task
    from tv_utils.tasks import Episode, make_task, parse_pairs
    from tv_utils.widgets import EXAMPLE_TASK

    for text, queries, layer in ((EXAMPLE_TASK, ["Corn", "Cherry", "Ocean"], 2),
                                 ("ab -> ba\ncd -> dc\nxy -> yx\nmn -> nm\npq -> qp", ["gh", "st", "uv", "e"], 1)):
        table, info = icl.own_task_answers(tiny_llama, text, ", ".join(queries), layer)
        task = make_task("custom", parse_pairs(text))
        demos, dummies = task.pairs[:-2], tuple(x for x, _ in task.pairs[-2:])
        assert info == {"demos": demos, "dummies": dummies}
        spaced = usable_task(task, tiny_llama.tokenizer)[0].spaced
        theta, _ = engine.episode_states(tiny_llama, [Episode(demos, dummies, (dummies[0], ""), spaced=spaced)],
                                         icl=False)
        query_ids = tiny_llama.encode([F.query(q) for q in queries])
        icl_ids = tiny_llama.encode([F.icl(demos, q, spaced) for q in queries])
        expected = {"zero-shot": engine.next_tokens(tiny_llama, query_ids),
                    "ICL": engine.next_tokens(tiny_llama, icl_ids),
                    f"task vector (layer {layer})": beyond.patch_shared(tiny_llama, query_ids, theta[0, layer], layer)}
        assert table["query"].tolist() == queries
        for column, ids in expected.items():
            assert table[column].tolist() == [tiny_llama.decode_token(i) for i in ids.tolist()], column


def test_stored_widget_tables_read_back_as_written(tiny_llama, tmp_path, monkeypatch):
    """`python -m tv_utils widgets` writes every playground setting and conflict pair; the widgets' readers give
    back what was computed (text as text, also a number-like or empty answer), only at the stored episode count."""
    from tv_utils import store
    from tv_utils.analyses import icl

    monkeypatch.setenv("TV_UTILS_RESULTS", str(tmp_path))
    table = icl.run(tiny_llama, ["next_letter", "to_upper"], n=4, out_dir=tmp_path)
    assert len(table) == 2 * len(icl.PLAYGROUND_KS) and (table.n == 4).all()
    stored = icl.stored_examples(tiny_llama.name, n=4)
    assert set(stored) == {(t, k) for t in ("next_letter", "to_upper") for k in icl.PLAYGROUND_KS}
    assert stored[("to_upper", 3)] == icl.icl_example(tiny_llama, "to_upper", 3, 4)
    assert icl.stored_examples(tiny_llama.name, n=10) == {} and icl.stored_examples("no-such-model", 4) == {}
    odd = table.head(2).assign(answer=[" 7", ""], n=5)
    store.save_table(odd, icl.playground_file(tiny_llama.name, tmp_path))
    assert [r["answer"] for r in icl.stored_examples(tiny_llama.name, n=5).values()] == [" 7", ""]

    pairs = [("next_letter", "to_upper"), ("to_upper", "next_letter")]
    widget = conflict.run_widget(tiny_llama, pairs, n=6, out_dir=tmp_path)
    back = conflict.stored_pairs(tiny_llama.name, n=6)
    assert list(back) == pairs and conflict.stored_pairs(tiny_llama.name, n=10) == {}
    sweep = conflict.b_dev_sweep(tiny_llama, "to_upper", 6)
    live = conflict.conflict_pair(tiny_llama, "next_letter", "to_upper", n=6, b_sweep=sweep)
    pd.testing.assert_frame_equal(back[pairs[0]], live.round(4), check_dtype=False)
    assert len(widget) == 2 * len(live)
    assert conflict.widget_pairs() == [(a, b) for a in conflict.TASK_NAMES for b in conflict.conflict_partners(a)]


def test_widgets_show_a_stored_setting_without_the_model(tiny_llama, tmp_path, monkeypatch):
    """A setting in the stored table shows at once ("stored run, n episodes") and never calls the model; one
    outside it still runs live (and says how long it took)."""
    from tv_utils import widgets
    from tv_utils.analyses import icl

    monkeypatch.setenv("TV_UTILS_RESULTS", str(tmp_path))
    icl.run(tiny_llama, ["next_letter"], n=4, out_dir=tmp_path)
    conflict.run_widget(tiny_llama, [("next_letter", "to_upper")], n=6, out_dir=tmp_path)
    live = icl.icl_example

    def no_model(*args, **kwargs):
        raise AssertionError("the model ran for a stored setting")

    monkeypatch.setattr(icl, "icl_example", no_model)
    box = widgets.icl_playground(tiny_llama, ["next_letter", "to_upper"], n=4, start="next_letter")
    (task, k, run), status, out = box.children[0].children, box.children[1], box.children[2]
    assert "stored run, 4 episodes" in status.value
    run.click()
    assert "next_letter with 5 demonstrations: stored run, 4 episodes" in status.value and out.outputs
    k.value = 2
    assert "next_letter with 2 demonstrations: stored run, 4 episodes" in status.value
    monkeypatch.setattr(icl, "icl_example", live)
    task.value = "to_upper"  # not stored: waits for Run, then runs the model
    assert "press Run to run" in status.value and not out.outputs
    run.click()
    assert "to_upper with 2 demonstrations: ran in" in status.value and out.outputs

    monkeypatch.setattr(conflict, "conflict_pair", no_model)
    monkeypatch.setattr(conflict, "b_dev_sweep", no_model)
    box = widgets.conflict_widget(tiny_llama, n=6, start=("next_letter", "to_upper"))
    (_, b, run), status = box.children[0].children, box.children[1]
    run.click()
    assert "next_letter with θ(to_upper): stored run, 6 episodes" in status.value
    b.value = "prev_letter"  # a pair not stored waits for Run
    assert "press Run to run 6 episodes of next_letter with θ(prev_letter)" in status.value


@pytest.mark.model
def test_conflict_pair_is_conflicting_tasks_without_override(gemma):
    """The conflict widget's fast path (theta(B) written only at B's best dev layer, the prompt prefix shared by
    the plain and the patched run) gives exactly the table of conflicting_tasks(..., override=False), on the
    notebook's opening pair."""
    pair = ("antonyms", "present_simple_past_simple")
    slow = conflict.conflicting_tasks(gemma, [pair], n=10, protocol=KIT, override=False)
    pd.testing.assert_frame_equal(conflict.conflict_pair(gemma, *pair, n=10), slow)


@pytest.mark.model
def test_stored_widget_tables_match_a_live_run(gemma, tmp_path):
    """A few random entries of the committed widget tables (`python -m tv_utils widgets --out figures`),
    recomputed now by the code the widgets run when a setting is not stored, and written the same way: equal,
    so the stored tables cannot drift from the live code."""
    import random

    from tv_utils import store
    from tv_utils.analyses import icl

    def read(path, columns):  # as written (4 decimals), every cell as text, so dtypes cannot differ
        return store.precomputed(path.name[:-len(".csv")], path.parent, text=columns).astype(str)

    rng = random.Random()
    stored = read(icl.playground_file(gemma.name, store.FIGURES), ["prompt", "answer", "expected"])
    stored = stored.set_index(["task", "k"], drop=False)
    picks = rng.sample(sorted(stored.index), 3)
    live = pd.concat([icl.playground_table(gemma, [task], [int(k)]) for task, k in picks], ignore_index=True)
    store.save_table(live, icl.playground_file(gemma.name, tmp_path))
    assert read(icl.playground_file(gemma.name, tmp_path), ["prompt", "answer", "expected"]).values.tolist() == \
        stored.loc[picks].values.tolist(), f"stored playground settings {picks} differ from a live run"

    text = ["model", "task_a", "task_b", "method", "b_dev_ties", "change_a_verdict", "change_b_verdict"]
    table = read(conflict.widget_file(gemma.name, store.FIGURES), text)
    offered = set(zip(table.task_a, table.task_b))
    assert len(table) == 2 * len(offered) and offered <= set(conflict.widget_pairs())  # plain ICL, theta(B)
    pairs = rng.sample(sorted(offered), 2)
    store.save_table(conflict.widget_table(gemma, pairs), conflict.widget_file(gemma.name, tmp_path))
    expected = pd.concat([table[(table.task_a == a) & (table.task_b == b)] for a, b in pairs])
    assert read(conflict.widget_file(gemma.name, tmp_path), text).values.tolist() == expected.values.tolist(), \
        f"stored conflict pairs {pairs} differ from a live run"
