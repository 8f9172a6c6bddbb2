"""Analyses on a tiny random Llama: shapes, invariants (alpha=0/1, save/load, logit lens), bad input."""

import numpy as np
import pandas as pd
import pytest
import torch

from tv_utils import interventions as iv
from tv_utils.analyses import beyond, conflict, geometry, vocab
from tv_utils.experiments import default_layer
from tv_utils.protocol import Protocol

P = Protocol(k=3, n_dev=6, n_test=6)


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
        assert row.acc_a == mine[mine.scored_on == "A"].hit.mean() and row.acc_b == mine[mine.scored_on == "B"].hit.mean()
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
