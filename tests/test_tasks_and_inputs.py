"""Task data, episode sampling, bad input, the model cache and determinism."""

import dataclasses
import json
import re

import torch

import pytest

from tv_utils import embedded, engine, models, store
from tv_utils.experiments import encode_queries, prepare_split, run_tasks, run_with_theta, sample_split
from tv_utils.protocol import Protocol, accuracy
from tv_utils.prompts import DEFAULT_FORMAT, PromptFormat, accepted_ids, answer_token_ids, hits, usable_task
from tv_utils.tasks import (CATEGORIES, TASK_NAMES, get_task, load_task_dir, load_task_file, make_task, parse_pairs,
                            sample_episodes, split_queries, tasks_in)

pytestmark = pytest.mark.tiny


def test_eighteen_tasks_in_four_categories_with_enough_data():
    assert len(TASK_NAMES) == 18
    assert sorted(len(tasks_in(c)) for c in CATEGORIES) == [4, 4, 4, 6]
    for name in TASK_NAMES:
        task = get_task(name)
        if task.category == "algorithmic":
            assert len(task) >= 25
        else:
            assert len(task) >= (150 if task.category in ("knowledge", "translation") else 100), name
        assert len({x for x, _ in task.pairs}) == len(task)


def test_algorithmic_tasks_are_right():
    assert ("a", "b") in get_task("next_letter").pairs and ("b", "a") in get_task("prev_letter").pairs
    for x, y in get_task("list_last").pairs:
        assert x.split(",")[-1] == y
    for x, y in get_task("list_first").pairs:
        assert x.split(",")[0] == y
    assert all(y == x.upper() for x, y in get_task("to_upper").pairs)


def test_episodes_are_seeded_and_split():
    task = get_task("en_fr")
    a = sample_episodes(task, 20, split="test", seed=3)
    assert a == sample_episodes(task, 20, split="test", seed=3)
    assert a != sample_episodes(task, 20, split="test", seed=4)
    pools = split_queries(task, seed=3)
    assert not {x for x, _ in pools["dev"]} & {x for x, _ in pools["test"]}
    test_inputs = {x for x, _ in pools["test"]}
    for ep in a:
        assert ep.query[0] in test_inputs and len(ep.demos) == 5 and len(ep.dummies) == 2
        inputs = [x for x, _ in ep.demos] + list(ep.dummies) + [ep.query[0]]
        assert len(set(inputs)) == len(inputs)


def test_prompt_format():
    fmt = PromptFormat()
    assert fmt.icl([("a", "b"), ("c", "d")], "e") == "example:a-> b\nexample:c-> d\nexample:e->"
    custom = PromptFormat(template="Q: {x}\nA:{y}", separator="\n\n")
    assert custom.icl([("a", "b")], "c") == "Q: a\nA: b\n\nQ: c\nA:"
    with pytest.raises(ValueError, match="end with"):
        PromptFormat(template="{y} <- {x}")


def test_user_task_from_text():
    task = make_task("mine", parse_pairs("cat -> meow\n\ndog -> woof\ncow->moo"))
    assert task.pairs == (("cat", "meow"), ("dog", "woof"), ("cow", "moo"))
    assert task.multi_token_answers


@pytest.mark.parametrize("bad, message", [
    ([], "at least 2"),
    ([("a", "b")], "at least 2"),
    ([("a", "b"), ("", "c")], "empty"),
    ([("a", "b"), ("a", "c")], "repeated inputs"),
    ([("a", "b"), ("c", None)], r"must be strings, got None \(NoneType\) in \('c', None\)"),
    ([("a", "b"), ("c", 1.5)], r"must be strings, got 1.5 \(float\)"),
    ([("a", "b"), ("c", float("nan"))], r"must be strings, got nan \(float\)"),
    (["ab", "cd"], r"each pair must be an \(input, output\) pair of strings, got 'ab'"),  # not split into letters
    ([("a", "b", "c"), ("d", "e")], "each pair must be an"),
    ("a -> b", "pairs must be a list of"),
    ([("a", "b"), ("two\nlines", "c")], "spans several lines"),
    ([("a", "b"), ("c", "d\r")], "spans several lines"),
    ([("a", "b"), ("c->d", "e")], "contains '->', which separates input from output"),
])
def test_bad_pairs(bad, message):
    with pytest.raises(ValueError, match=message):
        make_task("bad", bad)


def test_pairs_from_a_dict_and_a_known_category_only():
    assert make_task("d", {" a ": "b", "c": "d"}).pairs == (("a", "b"), ("c", "d"))  # stripped
    with pytest.raises(ValueError, match="unknown category 'custum'; valid categories: algorithmic, translation, "
                                         "linguistic, knowledge, custom"):
        make_task("c", [("a", "b"), ("c", "d")], category="custum")


@pytest.mark.parametrize("name, content", [
    ("colours.csv", "input,output\nsky,blue\n\n\"snow, fresh\",white\n"),  # blank lines skipped, quoted comma
    ("colours.csv", "\ufeffInput , Output\nsky,blue\n\"snow, fresh\",white\n"),  # a spreadsheet's BOM and header
    ("colours.json", '[["sky", "blue"], ["snow, fresh", "white"]]'),
    ("colours.json", '{"sky": "blue", "snow, fresh": "white"}'),
    ("colours.json", '[{"input": "sky", "output": "blue"}, {"input": "snow, fresh", "output": " white"}]'),
])
def test_task_file_formats(tmp_path, name, content):
    (tmp_path / name).write_text(content, encoding="utf-8")
    task = load_task_file(tmp_path / name)
    assert (task.name, task.category) == ("colours", "custom")
    assert task.pairs == (("sky", "blue"), ("snow, fresh", "white"))


@pytest.mark.parametrize("name, content, message", [
    ("t.csv", "x,y\na,b\n", "must start with the header line `input,output`, got 'x,y'"),
    ("t.csv", "", "must start with the header line"),
    ("t.csv", "input,output\na,b\nc\n", "line 3 has 1 fields, expected 2"),
    ("t.json", "{", "is not valid JSON"),
    ("t.json", "3", "got a JSON int"),
    ("t.json", '[["a", "b"], ["c", 4]]', "must be strings, got 4"),
    ("t.yaml", "a: b", "unknown format '.yaml'"),
    ("t.json", "[]", "task file {} holds an empty JSON list; a task needs at least 2 (input, output) pairs"),
    ("t.json", "{}", "holds an empty JSON object"),
    ("t.json", '[{"input": "a", "output": "b"}, {"input": "c"}]', "item 2 has no 'output' key (its keys: 'input')"),
    ("t.json", '[{"in": "a", "out": "b"}]', "item 1 has no 'input' and no 'output' key (its keys: 'in', 'out')"),
    ("t.json", '[{"input": "a", "output": "b"}, {"input": "c", "output": 4}]',
     "item 2: output must be a string or a non-empty list of strings (accepted answers), got 4"),
    ("t.json", '[{"input": "a", "output": ["b", null]}]', 'item 1: output must be a string or a non-empty list of '
                                                          'strings (accepted answers), got ["b", null]'),
    ("t.json", '[{"input": "a", "output": []}]', "item 1: output must be a string or a non-empty list"),
    ("t.json", '[{"input": 1, "output": "b"}]', "item 1: input must be a string, got 1"),
    ("t.json", '[{"input": "a", "output": "b"}, ["c", "d"]]', 'item 2 is ["c", "d"]; in a list of objects every '
                                                               'item must be {"input": ..., "output": ...}'),
])
def test_bad_task_files(tmp_path, name, content, message):
    (tmp_path / name).write_text(content)
    with pytest.raises(ValueError, match=re.escape(message.replace("{}", repr(str(tmp_path / name))))):
        load_task_file(tmp_path / name)
    with pytest.raises(ValueError, match="cannot read task file"):
        load_task_file(tmp_path / "absent.csv")


SEVERAL = [{"input": "sky", "output": ["blue", "azure"]}, {"input": "grass", "output": "green"},
           {"input": "snow", "output": ["white", " snowy ", "white"]}, {"input": "coal", "output": ["black"]}]


def test_task_file_of_objects_with_several_answers(tmp_path):
    (tmp_path / "colours.json").write_text(json.dumps(SEVERAL))
    task = load_task_file(tmp_path / "colours.json")
    assert task.pairs == (("sky", "blue"), ("grass", "green"), ("snow", "white"), ("coal", "black"))  # the first
    assert task.accepted == (("sky", ("blue", "azure")), ("snow", ("white", "snowy")))  # stripped, repeats dropped
    assert task.answers("sky") == ("blue", "azure") and task.answers("grass") == ("green",)
    assert make_task("colours", {x["input"]: x["output"] for x in SEVERAL}) == dataclasses.replace(task, description="")


@pytest.mark.parametrize("bad, message", [
    ([("a", []), ("c", "d")], "input 'a' has an empty list of answers; give at least one"),
    ([("a", ["b", 3]), ("c", "d")], r"must be strings, got 3 \(int\)"),
    ([("a", ["b", "x->y"]), ("c", "d")], "contains '->'"),
    ([("a", ["b", " "]), ("c", "d")], "empty inputs or outputs"),
])
def test_bad_lists_of_answers(bad, message):
    with pytest.raises(ValueError, match=message):
        make_task("bad", bad)


def test_task_dir_holds_one_task_per_file(tmp_path):
    (tmp_path / "colours.json").write_text(json.dumps(SEVERAL))
    (tmp_path / "shout.csv").write_text("input,output\na,A\nb,B\n")
    (tmp_path / "README.md").write_text("not a task")
    assert [(t.name, len(t)) for t in load_task_dir(tmp_path)] == [("colours", 4), ("shout", 2)]
    (tmp_path / "shout.json").write_text('[["a", "A"], ["b", "B"]]')
    with pytest.raises(ValueError, match="has several files for task\\(s\\) shout; keep one file per task name"):
        load_task_dir(tmp_path)
    (tmp_path / "empty").mkdir()
    with pytest.raises(ValueError, match="holds no task files \\(.json or .csv\\)"):
        load_task_dir(tmp_path / "empty")
    with pytest.raises(ValueError, match="is not a directory"):
        load_task_dir(tmp_path / "README.md")
    with pytest.raises(ValueError, match="cannot read task directory .*: No such file or directory"):
        load_task_dir(tmp_path / "absent")


def test_accepted_answers_are_scored_on_their_first_tokens(tokenizer):
    task, targets = usable_task(make_task("colours", [(x["input"], x["output"]) for x in SEVERAL]), tokenizer)
    ids = tokenizer.convert_tokens_to_ids
    assert targets == {"blue": ids(" b"), "green": ids(" g"), "white": ids(" w"), "black": ids(" b")}
    episodes = [dataclasses.replace(sample_episodes(task, 1, k=1, n_dummies=0)[0], query=(x, dict(task.pairs)[x]))
                for x in ("sky", "grass", "snow")]
    accepted = accepted_ids(tokenizer, task, episodes)  # the target first, rows padded by repeating it
    assert accepted.tolist() == [[ids(" b"), ids(" a")], [ids(" g"), ids(" g")], [ids(" w"), ids(" s")]]
    target = torch.tensor([ids(" b"), ids(" g"), ids(" w")])
    predicted = torch.tensor([[ids("a"), ids(" b"), ids(" w")], [ids(" a"), ids(" g"), ids(" s")],
                              [ids(" s"), ids("w"), ids(" a")]])  # [episode, layer]
    assert hits(tokenizer, predicted, target[:, None], accepted).tolist() == [
        [True, True, False], [False, True, False], [True, True, False]]
    assert hits(tokenizer, predicted, target[:, None]).tolist() == [
        [False, True, False], [False, True, False], [False, True, False]]
    assert accepted_ids(tokenizer, task, [episodes[1]]) is None  # one answer each: scored exactly as before
    assert accepted_ids(tokenizer, get_task("next_letter"), sample_episodes(get_task("next_letter"), 5)) is None
    with pytest.raises(ValueError, match="one per target"):
        hits(tokenizer, predicted, target[:2], accepted)


def test_several_answers_run_through_the_protocol(tiny_llama):
    """Demonstrations show the first answer, so the episodes are those of the task with first answers alone;
    accepting every letter makes a hit of each prediction whose text is a letter, in every method and layer."""
    letters = "abcdefghijklmnopqrstuvwxyz"
    inputs = [f"{a}{b}" for a, b in zip(letters, letters[5:17])]
    one = make_task("words", [(x, x[::-1]) for x in inputs])
    several = make_task("words", [(x, [x[::-1], *letters]) for x in inputs])
    proto = Protocol(k=3, n_dev=6, n_test=8, seed=1)
    first = run_tasks(tiny_llama, [one], proto, progress=False)
    every = run_tasks(tiny_llama, [several], proto, progress=False)
    assert sample_split(tiny_llama, several, "test", 8, proto, DEFAULT_FORMAT)[1] == \
        sample_split(tiny_llama, one, "test", 8, proto, DEFAULT_FORMAT)[1]
    assert (every.episodes.hit >= first.episodes.hit).all()  # the same rows: a hit stays a hit
    _, episodes, _ = sample_split(tiny_llama, several, "test", 8, proto, DEFAULT_FORMAT)
    baseline = engine.next_tokens(tiny_llama, encode_queries(tiny_llama, episodes, DEFAULT_FORMAT))
    is_letter = [tiny_llama.tokenizer.decode([t]).strip() in set(letters) for t in baseline.tolist()]
    test = every.episodes[(every.episodes.split == "test") & (every.episodes.method == "baseline")]
    assert test.hit.astype(bool).tolist() == is_letter
    traced = run_tasks(tiny_llama, [several], proto, progress=False, remote="local")  # the NDIF path scores alike
    assert all(a.equals(b) for a, b in zip(traced, every))


def test_bad_text_line():
    with pytest.raises(ValueError, match="line 2"):
        parse_pairs("a -> b\nno arrow here")


def test_unknown_task_lists_valid_names():
    with pytest.raises(KeyError, match="next_letter.*person_language"):
        get_task("next_leter")


def test_too_few_pairs_for_an_episode():
    task = make_task("small", [("a", "b"), ("c", "d"), ("e", "f")])
    with pytest.raises(ValueError, match=r"3 usable pairs; an episode needs 8"):
        sample_episodes(task, 1)


def test_unknown_model_lists_embedded_models():
    with pytest.raises(ValueError, match="gemma3-270m.*smollm2-135m"):
        models.load_model("no-such-org/no-such-model")
    with pytest.raises(KeyError, match="embedded models: gemma3-270m"):
        embedded.install_model("gemma4")


def test_missing_embedded_package_says_how_to_install(tmp_path):
    # one slice package missing (a name no one installs), whatever this machine has installed
    spec = dataclasses.replace(embedded.EMBEDDED["qwen2.5-coder-1.5b"], packages=("tv-utils-missing-slice",))
    with pytest.raises(ImportError,
                       match="'tv-utils-missing-slice' is not installed.*install-model qwen2.5-coder-1.5b"):
        embedded._write_gguf(spec, tmp_path)
    assert list(tmp_path.iterdir()) == []  # nothing half-written


def _fake_build(out):
    (out / "weights.bin").write_bytes(b"x" * 100)


def test_cache_is_built_atomically_and_reused(tmp_path):
    calls = []
    path = embedded.cached_build("m", lambda out: (calls.append(1), _fake_build(out)), root=tmp_path)
    assert (path / "weights.bin").stat().st_size == 100 and calls == [1]
    assert embedded.cached_build("m", lambda out: calls.append(2), root=tmp_path) == path and calls == [1]
    assert json.loads((path / embedded.MARKER).read_text())["files"]["weights.bin"].startswith("100:")


@pytest.mark.parametrize("corrupt", [b"x" * 10, b"y" + b"x" * 99], ids=["truncated", "same size"])
def test_corrupt_cache_is_rebuilt(tmp_path, corrupt):
    path = embedded.cached_build("m", _fake_build, root=tmp_path)
    (path / "weights.bin").write_bytes(corrupt)
    with pytest.warns(UserWarning, match="corrupt"):
        embedded.cached_build("m", _fake_build, root=tmp_path)
    assert (path / "weights.bin").read_bytes() == b"x" * 100


def test_failed_build_leaves_nothing_behind(tmp_path):
    def broken(out):
        _fake_build(out)
        raise RuntimeError("conversion failed")

    with pytest.raises(RuntimeError):
        embedded.cached_build("m", broken, root=tmp_path)
    assert list(tmp_path.iterdir()) == []


def test_answers_are_tokenized_with_their_leading_space(tokenizer):
    assert answer_token_ids(tokenizer, "cold") == tokenizer(" cold", add_special_tokens=False)["input_ids"]
    task, targets = usable_task(get_task("antonyms"), tokenizer)
    assert task.pairs == ()  # a char tokenizer has no single-token words...
    task, targets = usable_task(get_task("next_letter"), tokenizer)
    assert len(task) == 25 and targets["b"] == tokenizer.convert_tokens_to_ids(" b")  # ...but " b" is one token
    capitals, targets = usable_task(get_task("country_capital"), tokenizer)
    assert len(capitals) == len(get_task("country_capital"))  # knowledge answers: first token of many
    assert targets["Paris"] == tokenizer.convert_tokens_to_ids(" P")


def test_same_seed_same_results(tiny_llama):
    task = make_task("shift", [(a, b) for a, b in zip("abcdefghijklmnop", "bcdefghijklmnopq")], category="custom")
    proto = Protocol(k=3, n_dev=6, n_test=6, seed=1)
    first = run_tasks(tiny_llama, [task], proto, progress=False)
    second = run_tasks(tiny_llama, [task], proto, progress=False)
    assert all(a.equals(b) for a, b in zip(first, second))
    assert list(first[1]["layer"]) == [0, 1, 2, 3]


def test_run_with_theta_hands_back_each_tasks_theta(tiny_llama):
    """The run's tables are run_tasks' and each task's θ is its episodes' θ, for function vectors to reuse (one
    task's dev θ: the same batch as prepare_split's, so the same bytes)."""
    shift = make_task("shift", [(a, b) for a, b in zip("abcdefghijklmnop", "bcdefghijklmnopq")], category="custom")
    back = make_task("back", [(b, a) for a, b in zip("abcdefghijklmnop", "bcdefghijklmnopq")], category="custom")
    proto = Protocol(k=3, n_dev=6, n_test=5, seed=1)
    run, theta = run_with_theta(tiny_llama, [shift, back], proto, progress=False)
    assert all(a.equals(b) for a, b in zip(run, run_tasks(tiny_llama, [shift, back], proto, progress=False)))
    shape = (tiny_llama.n_layers, tiny_llama.hf.config.hidden_size)
    assert [t.shape for t in theta["dev"]] == [(6, *shape)] * 2
    assert [t.shape for t in theta["test"]] == [(5, *shape)] * 2
    _, alone = run_with_theta(tiny_llama, [back], proto, progress=False)
    assert torch.equal(alone["dev"][0], prepare_split(tiny_llama, back, "dev", 6, proto, icl=False).theta)
    for split, n in (("dev", 6), ("test", 5)):
        own = prepare_split(tiny_llama, back, split, n, proto, icl=False).theta
        torch.testing.assert_close(theta[split][1], own, atol=1e-5, rtol=1e-5)  # batched with shift's episodes


def test_scoring_ignores_leading_space_but_not_case(tokenizer):

    ids = tokenizer.convert_tokens_to_ids
    predicted = torch.tensor([ids("P"), ids(" P"), ids(" p"), ids("\n"), ids(" ")])
    target = torch.tensor([ids(" P"), ids(" P"), ids(" P"), ids(" "), ids(" ")])
    assert hits(tokenizer, predicted, target).tolist() == [True, True, False, False, True]
    assert hits(tokenizer, predicted[:, None], target[None, :2]).shape == (5, 2)


def test_paper_tasks_keep_their_spaced_answers_and_committed_pairs_on_gemma(gemma):
    """The spacing rule leaves the 18 tasks as they were: same pairs, same `-> answer` prompts, same results."""
    committed = store.precomputed("reproduce_gemma3-270m_results").set_index("task")["n_pairs"]
    for name in TASK_NAMES:
        usable, _ = usable_task(get_task(name), gemma.tokenizer)
        assert usable.spaced and len(usable) == committed[name], name


def test_numbers_drop_the_leading_space_and_score_on_their_digit(gemma):
    """Gemma reads ` 8` as a bare `▁` then `8`; a numeric task is written `3->4` and scored on the digit."""
    tok = gemma.tokenizer
    space, eight = answer_token_ids(tok, "8")
    assert (tok.decode([space]), tok.decode([eight])) == (" ", "8")
    assert not hits(tok, torch.tensor([space]), torch.tensor([eight])).item()  # a space alone is no answer
    plus_one = make_task("plus_one", [(str(i), str(i + 1)) for i in range(9)])
    usable, targets = usable_task(plus_one, tok)
    assert not usable.spaced and usable.pairs == plus_one.pairs
    assert {y: tok.decode([t]) for y, t in targets.items()} == {y: y for _, y in plus_one.pairs}
    episode = sample_episodes(usable, 1)[0]
    (x, y), *_ = episode.demos
    assert DEFAULT_FORMAT.episode_icl(episode).startswith(f"example:{x}->{y}\n")
    assert len(usable_task(dataclasses.replace(plus_one, category="algorithmic"), tok)[0]) == 9  # not 0
    split = prepare_split(gemma, plus_one, "test", 10)
    answers = [gemma.decode_token(t) for t in split.icl_pred.tolist()]
    assert all(a.isdigit() for a in answers), answers  # after `-> 4` demonstrations it answered a bare space
    assert accuracy(gemma, split.icl_pred, split.target) >= 0.8
