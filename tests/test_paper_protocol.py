"""The official code's protocol as a named setting (`Protocol(prompts=, sampling=, scoring=)`), the statistics by
query, and rescoring a stored run: prompts against strings written from the official code's rules, its sampling,
its scoring, exact McNemar with Holm, the coverage of the query-clustered interval, and `rescore` against live runs."""

import math

import numpy as np
import pandas as pd
import pytest
import torch

from tv_utils import protocol as P
from tv_utils.experiments import RESCORE_COLUMNS, rescore, run_tasks
from tv_utils.prompts import DEFAULT_FORMAT, SPACED_SHARE, decoded_answers, paper_match, usable_task
from tv_utils.tasks import get_task, make_task, sample_episodes

LETTERS = "abcdefghijklmnopqrstuvwxyz"
PAPER = P.PROTOCOLS["paper"]


def official_prompt(demos, query, mapping: bool) -> str:
    """few_shot_format.py with the task's pairs as the official task classes hold them: mapping tasks as
    {" dog": " chien"} (mapping_task.py), the others bare."""
    sp = " " if mapping else ""
    lines = [f"example:{sp}{x}->{sp}{y}" for x, y in demos]
    return "\n".join(lines) + "\n" + f"example:{sp}{query}->"


def official_mapping(tokenizer, pairs) -> tuple[bool, set]:
    """mapping_task.py's filter: answers with `"!" + answer` two tokens, spaced when that keeps >= 70% as many."""
    single = {sp: {y for _, y in pairs if len(tokenizer.tokenize("!" + sp + y)) == 2} for sp in (" ", "")}
    spaced = len(single[" "]) >= 0.7 * len(single[""])
    return spaced, single[" " if spaced else ""]


def check_official_prompts(tokenizer, task, mapping: bool):
    usable, targets = usable_task(task, tokenizer, DEFAULT_FORMAT, "paper")
    if mapping:
        spaced, kept = official_mapping(tokenizer, task.pairs)
        assert {y for _, y in usable.pairs} == kept and usable.spaced == spaced
    else:
        assert [(x, y) for x, y in usable.pairs] == list(task.pairs) and not usable.spaced  # every pair, bare
        spaced = False
    for ep in sample_episodes(usable, 4, 5, 2, "test", 0, "paper"):
        bare = [(x.strip(), y) for x, y in ep.demos]
        prompts = DEFAULT_FORMAT.episode_prompts(ep)
        assert prompts[0] == official_prompt(bare, ep.query[0].strip(), mapping and spaced)
        assert prompts[1:] == [official_prompt(bare, d.strip(), mapping and spaced) for d in ep.dummies]
        assert DEFAULT_FORMAT.query(ep.query[0]) == official_prompt([], ep.query[0].strip(), mapping and spaced)[1:]
    return usable


@pytest.mark.tiny
def test_official_prompts_of_each_task_type_on_a_tiny_tokenizer(tokenizer):
    letters = list(zip(LETTERS[:-1], LETTERS[1:]))
    check_official_prompts(tokenizer, make_task("shift", letters, "algorithmic"), mapping=False)
    check_official_prompts(tokenizer, make_task("capital", [("Fr", "Paris"), ("It", "Rome"), *letters[:10]],
                                                "knowledge"), mapping=False)
    # the char tokenizer has one token for " b" and for "b": single letters stay, words split and are dropped
    words = [*letters[:12], ("dog", "chien"), ("cat", "chat")]
    usable = check_official_prompts(tokenizer, make_task("fr", words, "translation"), mapping=True)
    assert usable.spaced and len(usable.pairs) == 12 and usable.pairs[0] == (" a", "b")
    assert DEFAULT_FORMAT.episode_icl(sample_episodes(usable, 1, 2, 2, "dev", 0, "paper")[0]).startswith("example: ")


def test_official_prompts_of_each_task_type_on_gemma(gemma):
    for name, mapping in (("next_letter", False), ("list_first", False), ("to_upper", False), ("en_fr", True),
                          ("es_en", True), ("antonyms", True), ("present_simple_gerund", True),
                          ("country_capital", False), ("location_religion", False)):
        usable = check_official_prompts(gemma.tokenizer, get_task(name), mapping)
        if mapping:  # Gemma keeps the paper's mapping tasks spaced, as the official code would
            assert usable.spaced, name
    assert SPACED_SHARE == 0.7


@pytest.mark.tiny
def test_official_sampling_draws_each_query_afresh_from_all_inputs():
    task = make_task("shift", list(zip(LETTERS[:-1], LETTERS[1:])), "algorithmic")
    dev = sample_episodes(task, 200, 5, 2, "dev", 0, "paper")
    test = sample_episodes(task, 200, 5, 2, "test", 0, "paper")
    assert dev == sample_episodes(task, 200, 5, 2, "dev", 0, "paper")  # seeded
    inputs = {x for x, _ in task.pairs}
    assert {ep.query[0] for ep in dev} == inputs == {ep.query[0] for ep in test}  # no dev/test halves
    overlap = 0
    for ep in dev:
        demo_inputs = {x for x, _ in ep.demos}
        assert ep.query[0] not in demo_inputs and ep.query[0] not in ep.dummies
        assert len(demo_inputs) == 5 and len(set(ep.dummies)) == 2
        overlap += bool(demo_inputs & set(ep.dummies))
    assert overlap > 0  # a dummy may repeat a demonstration's input, as in the official code
    kit = sample_episodes(task, 200, 5, 2, "test", 0)
    assert len({ep.query[0] for ep in kit}) <= 13  # the kit's test half
    with pytest.raises(ValueError, match="unknown sampling 'fresh'"):
        sample_episodes(task, 2, sampling="fresh")
    with pytest.raises(ValueError, match="unknown scoring"):
        P.Protocol(scoring="strict")


@pytest.mark.tiny
def test_official_scoring_rules(tokenizer):
    assert paper_match("translation", " chien", "chien") and not paper_match("translation", "chi", "chien")
    assert paper_match("knowledge", "Christian", "Christianity") and paper_match("knowledge", "New Delhi", "New")
    assert paper_match("knowledge", "Par", "Paris")  # a prefix either way counts, as task.py's allow_prefix
    assert not paper_match("knowledge", "", "Paris") and not paper_match("linguistic", "Went", "went")
    ids = tokenizer.convert_tokens_to_ids([" b", "\n", "<eos>", "b"])
    assert decoded_answers(tokenizer, ids) == ["b", "", "", "b"]


@pytest.mark.tiny
def test_exact_mcnemar_and_holm_verdicts():
    assert P.mcnemar_exact(11, 3) == pytest.approx(0.0574, abs=1e-4)  # the score test gives 0.033
    assert P.mcnemar_exact(0, 5) == 0.0625 and P.mcnemar_exact(1, 7) == pytest.approx(0.0703, abs=1e-4)
    assert P.mcnemar_exact(0, 0) == 1.0 and P.mcnemar_exact(4, 4) == 1.0
    # task "a": 9 wins and no loss (exact p = 0.0039); "b": 6 wins (p = 0.031), which Holm over 3 tasks raises
    # to 0.031 * 2 = 0.0625: no verdict; "c": no discordant episode
    rows = []
    for task, wins in (("a", 9), ("b", 6), ("c", 0)):
        for e in range(40):
            rows += [{"task": task, "episode": e, "method": "tv", "hit": int(e < wins)},
                     {"task": task, "episode": e, "method": "icl", "hit": 0}]
    table = P.compare(pd.DataFrame(rows), "tv", "icl", exact=True).set_index("task")
    assert table.loc["a", "p_value"] == pytest.approx(2 / 2**9) and table.loc["a", "verdict"] == "better"
    assert table.loc["b", "p_value"] < 0.05 < table.loc["b", "p_holm"]
    assert table.loc["b", "verdict"] == "no detectable difference"
    assert P.compare(pd.DataFrame(rows), "tv", "icl").set_index("task").loc["b", "verdict"] == "better"  # score test


@pytest.mark.tiny
def test_query_interval_covers_the_truth_where_the_episode_interval_does_not():
    """26 queries, each with its own accuracy (strong query effects); a run's 50 episodes ask 13 of them (a seeded
    half, as the kit's test pool) with repeats; the truth is the mean over all 26. The interval that resamples
    queries covers it about 95% of the time; Wilson over the 50 episodes, which treats them as independent, far
    less."""
    rng = np.random.default_rng(0)
    cover = {"query": 0, "episode": 0}
    reps = 300
    for r in range(reps):
        p = rng.beta(0.3, 0.3, size=26)
        pool = rng.choice(26, size=13, replace=False)
        queries = rng.choice(pool, size=50)
        hits = rng.random(50) < p[queries]
        truth = p.mean()
        lo, hi = P.query_interval(hits, queries.tolist(), f"sim/{r}")
        cover["query"] += lo <= truth <= hi
        lo, hi = P.wilson(int(hits.sum()), 50)
        cover["episode"] += lo <= truth <= hi
    assert 0.91 <= cover["query"] / reps <= 0.99  # 0.95 with this seed
    assert cover["episode"] / reps <= 0.85  # 0.80
    assert P.query_interval([1, 1, 1, 1], ["a", "a", "b", "b"]) == P.wilson(2, 2)  # all right: 2 queries' worth
    assert P.query_interval([1, 0, 1], ["a", "b", "c"]) == P.wilson(2, 3)  # all distinct: Wilson
    same = pd.DataFrame([{"task": "t", "episode": e, "query": "ab"[e % 2], "method": m, "hit": 1}
                         for e in range(10) for m in ("tv", "icl")])
    row = P.compare(same, "tv", "icl", exact=True).iloc[0]  # both always right on 2 queries: not a [0, 0] interval
    assert (row.diff_lo, row.diff_hi) == pytest.approx(P.tango(0, 0, 2)) and row.diff_lo < 0 < row.diff_hi


@pytest.mark.tiny
def test_runs_keep_queries_and_predictions_and_rescore_matches_a_live_run(tiny_llama):
    tasks = [make_task("shift", list(zip(LETTERS[:-1], LETTERS[1:])), "algorithmic"),
             make_task("capital", [(c * 2, c.upper() + "x") for c in LETTERS], "knowledge")]
    small = P.Protocol(k=3, n_dev=6, n_test=8, seed=1)
    kit = run_tasks(tiny_llama, tasks, small, progress=False)
    assert set(RESCORE_COLUMNS) <= set(kit.episodes.columns)
    assert (kit.results.n_queries <= 8).all() and "tv_vs_icl_p_holm" in kit.results
    same, _ = rescore(kit.episodes, "kit", {"capital": "knowledge"})
    assert same[["baseline", "icl", "tv"]].to_numpy().tolist() == kit.results[["baseline", "icl", "tv"]].to_numpy(
        ).tolist()
    paper = run_tasks(tiny_llama, tasks, P.Protocol(k=3, n_dev=6, n_test=8, seed=1, scoring="paper"),
                      progress=False)
    stored = kit.episodes.astype({"pred_text": str})
    stored.to_csv(buffer := __import__("io").StringIO(), index=False)
    buffer.seek(0)
    text = dict.fromkeys(("query", "answer", "target_text", "pred_text"), str)
    rescored, table = rescore(pd.read_csv(buffer, keep_default_na=False, dtype=text), "paper",
                              {"capital": "knowledge"})
    dev = table[table.split == "dev"].groupby(["task", "layer"], sort=False).hit.mean()
    assert dev.tolist() == paper.per_layer.dev_acc.tolist()  # every dev cell rescored as the live run scored it
    for (_, live), (_, again) in zip(paper.results.iterrows(), rescored.iterrows()):
        assert (live.baseline, live.icl) == (again.baseline, again.icl)
        assert again.layer_rescored == live.best_layer
        if again.best_layer == live.best_layer:
            assert again.tv == live.tv
    with pytest.raises(ValueError, match="no query, answer"):
        rescore(kit.episodes.drop(columns=["query", "answer"]), "paper")


@pytest.mark.tiny
def test_the_paper_protocol_runs_and_the_traced_path_agrees(tiny_llama):
    from tv_utils.interventions import reference_protocol

    task = make_task("fr", [(c, d) for c, d in zip(LETTERS, LETTERS[::-1])], "translation")
    p = P.Protocol(k=3, n_dev=6, n_test=5, seed=2, prompts="paper", sampling="paper", scoring="paper")
    run = run_tasks(tiny_llama, [task], p, progress=False)
    ref = reference_protocol(tiny_llama, task, p)
    assert run.results.iloc[0][["baseline", "icl", "tv", "best_layer"]].tolist() == pytest.approx(
        [ref["baseline"], ref["icl"], ref["tv"], ref["best_layer"]])
    assert all(q == q.strip() for q in run.episodes["query"])  # the official " a" is stored as "a"
    assert torch.equal(ref["tv_pred"], torch.tensor(run.episodes.query("split == 'test' and method == 'tv'").pred
                                                    .tolist()))
    assert P.Protocol() == P.PAPER == P.PROTOCOLS["paper"] and P.PAPER.variant == "paper"  # the default
    assert P.KIT.variant == "kit" and P.Protocol(scoring="kit").variant == "mixed"
    assert math.isfinite(run.results.tv_lo.iloc[0])


@pytest.mark.tiny
def test_conflict_as_in_the_official_overriding_experiment(tiny_llama):
    """`conflict.paper_protocol()`: 4 demonstrations, 100 pairs, the paper's prompts and A's string rule for both
    answers; episodes whose A and B answers share their first token are counted."""
    from tv_utils.analyses import conflict

    protocol, n = conflict.paper_protocol()
    assert (protocol.k, n, protocol.variant) == (4, 100, "paper")
    episodes = conflict.shared_queries("next_letter", "to_upper", protocol, 6, "test", tiny_llama.tokenizer)
    assert all(len(ep.demos) == 4 for ep in episodes)
    assert DEFAULT_FORMAT.episode_icl(episodes[0]).count("->") == 5 and "-> " not in DEFAULT_FORMAT.episode_icl(
        episodes[0])  # letters bare, as token_operation_task.py writes them
    hits = conflict.conflict_hits(tiny_llama, [("next_letter", "to_upper")], n=6, protocol=protocol)
    test = hits[hits.split == "test"]
    assert test.groupby("scored_on").episode.nunique().tolist() == [6, 6]
    assert not test.same_first_token.any()  # b -> c and b -> B never share a token
    table = conflict.conflict_table(hits, exact=True)
    assert (table.same_first_token == 0).all() and (table.n == 6).all()
    assert (table.n_queries <= 6).all() and table[["acc_a_lo", "acc_b_hi"]].notna().all().all()  # by query
    by_layer = conflict.conflict_by_layer(hits)
    assert (by_layer.n_queries == test[test.method == conflict.CONFLICT]["query"].nunique()).all()
    assert ((by_layer.acc_b_lo <= by_layer.acc_b) & (by_layer.acc_b <= by_layer.acc_b_hi)).all()
    kit = conflict.conflict_hits(tiny_llama, [("next_letter", "to_upper")], n=6, protocol=P.KIT)
    assert "same_first_token" not in kit  # the kit's tables keep their columns
    assert "n_queries" not in conflict.conflict_by_layer(kit)


@pytest.mark.tiny
def test_task_words_at_best_plus_two_against_a_control(tiny_llama):
    """`vocab.task_words`: per task its layer (best + 2, capped at the last), the official figure's word filter,
    the share of task answers among θ's words and the control's, and the dummies' and query's answer ranks."""
    from tv_utils.analyses import vocab

    tasks = {"next_letter": 1, "to_upper": 3}
    table = vocab.task_words(tiny_llama, tasks, PAPER, n=4)
    assert table.layer.tolist() == [3, 3] and table.best_layer.tolist() == [1, 3]
    assert table[["task_share", "control_share"]].stack().between(0, 1).all()
    for words in table.top_words:
        assert all(w.isalpha() and w.isascii() for w in words.split(", ") if w)
        assert len({w.lower() for w in words.split(", ")}) == len(words.split(", "))
    assert (table.dummy_answer_median_rank >= 0).all() and (table.query_answer_median_rank >= 0).all()


@pytest.mark.tiny
def test_vocab_run_adds_the_task_words_once_a_reproduce_run_is_stored(tiny_llama, tmp_path):
    """`vocab.run` writes its per-layer tables; the paper's task words (at the stored run's best layers + 2)
    only beside a stored reproduce run of the model, whose best layers it needs."""
    from tv_utils.analyses import vocab

    alone = vocab.run(tiny_llama, ["next_letter"], n=3, layer=1, out_dir=tmp_path, figures=False)
    assert alone["task_words"] is None and not list(tmp_path.glob("*_task_words.csv"))
    stored = pd.DataFrame({"task": ["next_letter", "to_upper"], "best_layer": [1, 3]})  # a reproduce run's table
    stored.to_csv(tmp_path / "reproduce_tiny-llama_results.csv", index=False)
    best = stored.set_index("task").best_layer
    words = vocab.run(tiny_llama, ["next_letter", "to_upper"], n=3, layer=1, out_dir=tmp_path,
                      figures=False)["task_words"]
    assert words.set_index("task").best_layer.to_dict() == best.to_dict()
    assert pd.read_csv(tmp_path / "vocab_tiny-llama_task_words.csv").task.tolist() == ["next_letter", "to_upper"]


@pytest.mark.tiny
def test_conflict_departures_compare_the_kits_settings_with_the_official_ones(tiny_llama, tmp_path):
    from tv_utils.analyses.departures import conflict_departures

    table = conflict_departures(tiny_llama, [("next_letter", "to_upper")], out_dir=tmp_path)
    assert len(table) == 2 and set(table.n_paper) == {100} and set(table.n_kit) == {50}
    row = table.iloc[1]
    assert row.acc_b_kit_minus_paper == pytest.approx(row.acc_b_kit - row.acc_b_paper)
    assert row.acc_b_diff_lo <= row.acc_b_kit_minus_paper <= row.acc_b_diff_hi
    assert (tmp_path / "departures_tiny-llama_conflict.csv").exists()


@pytest.mark.tiny
def test_a_run_against_the_reference_combines_their_own_intervals():
    from tv_utils.experiments import reference_diff

    def table(tv, lo, hi):
        row = {"task": "next_letter", "n_test": 50, "best_layer": 10, "baseline": 0.1, "icl": 0.2, "tv": tv,
               "tv_lo": lo, "tv_hi": hi}
        return pd.DataFrame([row | {f"{m}_{s}": np.nan for m in ("baseline", "icl") for s in ("lo", "hi")}])

    _, diff = reference_diff(table(0.8, 0.59, 0.96), None, table(0.76, 0.63, 0.86))
    row = diff.set_index("method").loc["tv"]
    assert row.difference_lo == pytest.approx(0.04 - math.hypot(0.8 - 0.59, 0.86 - 0.76))
    assert row.difference_hi == pytest.approx(0.04 + math.hypot(0.96 - 0.8, 0.76 - 0.63))
