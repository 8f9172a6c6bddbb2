"""Task data, episode sampling, bad input, the model cache and determinism."""

import dataclasses
import json
import re

import torch

import pytest

from tv_utils import models, store
from tv_utils.experiments import prepare_split, run_tasks
from tv_utils.protocol import Protocol, accuracy
from tv_utils.prompts import DEFAULT_FORMAT, PromptFormat, answer_token_ids, hits, usable_task
from tv_utils.tasks import (CATEGORIES, TASK_NAMES, get_task, load_task_file, make_task, parse_pairs,
                            sample_episodes, split_queries, tasks_in)


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
])
def test_bad_task_files(tmp_path, name, content, message):
    (tmp_path / name).write_text(content)
    with pytest.raises(ValueError, match=re.escape(message)):
        load_task_file(tmp_path / name)
    with pytest.raises(ValueError, match="cannot read task file"):
        load_task_file(tmp_path / "absent.csv")


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
        models.install_model("gemma4")


def test_missing_embedded_package_says_how_to_install(tmp_path):
    # one slice package missing (a name no one installs), whatever this machine has installed
    spec = dataclasses.replace(models.EMBEDDED["qwen2.5-coder-1.5b"], packages=("tv-utils-missing-slice",))
    with pytest.raises(ImportError, match="'tv-utils-missing-slice' is not installed.*install-model qwen2.5-coder-1.5b"):
        models._write_gguf(spec, tmp_path)
    assert list(tmp_path.iterdir()) == []  # nothing half-written


def _fake_build(out):
    (out / "weights.bin").write_bytes(b"x" * 100)


def test_cache_is_built_atomically_and_reused(tmp_path):
    calls = []
    path = models.cached_build("m", lambda out: (calls.append(1), _fake_build(out)), root=tmp_path)
    assert (path / "weights.bin").stat().st_size == 100 and calls == [1]
    assert models.cached_build("m", lambda out: calls.append(2), root=tmp_path) == path and calls == [1]
    assert json.loads((path / models.MARKER).read_text())["files"]["weights.bin"].startswith("100:")


@pytest.mark.parametrize("corrupt", [b"x" * 10, b"y" + b"x" * 99], ids=["truncated", "same size"])
def test_corrupt_cache_is_rebuilt(tmp_path, corrupt):
    path = models.cached_build("m", _fake_build, root=tmp_path)
    (path / "weights.bin").write_bytes(corrupt)
    with pytest.warns(UserWarning, match="corrupt"):
        models.cached_build("m", _fake_build, root=tmp_path)
    assert (path / "weights.bin").read_bytes() == b"x" * 100


def test_failed_build_leaves_nothing_behind(tmp_path):
    def broken(out):
        _fake_build(out)
        raise RuntimeError("conversion failed")

    with pytest.raises(RuntimeError):
        models.cached_build("m", broken, root=tmp_path)
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
