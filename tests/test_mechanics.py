"""Capture/patch invariants on tiny random models of six families, and engine == nnsight reference."""

import copy
import types

import pytest
import torch

from tv_utils import engine, head
from tv_utils import interventions as iv
from tv_utils.prompts import DEFAULT_FORMAT
from tv_utils.tasks import make_task, sample_episodes

pytestmark = pytest.mark.tiny

PROMPTS = ["example:ab-> c\nexample:q->", "example:hello->", "x->", "example:abc-> d\nexample:e-> f\nexample:gh->"]
ATOL = 1e-4


def assert_numerically_close(actual, expected, model):
    """Equal up to rounding: float32 to 1e-4; bfloat16 (8 bits of mantissa) to 2% of the values' scale,
    since batching and prefix caching change the order of its rounded sums."""
    if model.dtype == torch.float32:
        torch.testing.assert_close(actual, expected, atol=ATOL, rtol=1e-4)
    else:
        torch.testing.assert_close(actual, expected, atol=2e-2 * expected.abs().max().item(), rtol=2e-2)


def _seqs(model, texts=PROMPTS):
    return model.encode(texts)


def test_patching_own_state_changes_nothing(tiny):
    seqs = _seqs(tiny)
    clean = iv.patched_logits(tiny, seqs, None, None)
    states = iv.capture(tiny, seqs)
    for layer in range(tiny.n_layers):
        patched = iv.patched_logits(tiny, seqs, states[:, layer], layer)
        torch.testing.assert_close(patched, clean, atol=ATOL, rtol=0)


def test_patching_last_layer_reproduces_other_prompt(tiny):
    seqs = _seqs(tiny)
    donor = seqs[::-1]
    donor_logits = iv.patched_logits(tiny, donor, None, None)
    donor_states = iv.capture(tiny, donor)
    last = tiny.n_layers - 1
    patched = iv.patched_logits(tiny, seqs, donor_states[:, last], last)
    torch.testing.assert_close(patched, donor_logits, atol=ATOL, rtol=0)
    assert not torch.allclose(iv.patched_logits(tiny, seqs, None, None), donor_logits, atol=ATOL)


def test_patch_leaves_upstream_layers_alone(tiny):
    seqs = _seqs(tiny)
    batch = iv.pad_left(tiny, seqs)
    _, clean, _ = engine.forward(tiny, batch, capture=True)
    layer = 2
    theta = torch.randn(len(seqs), clean.shape[-1]) * 10
    _, patched, _ = engine.forward(tiny, batch, capture=True, patch={layer: (torch.arange(len(seqs)), theta)})
    torch.testing.assert_close(patched[:, :layer], clean[:, :layer], atol=0, rtol=0)
    torch.testing.assert_close(patched[:, layer], theta.to(tiny.dtype), atol=0, rtol=0)
    assert not torch.allclose(patched[:, layer + 1], clean[:, layer + 1])


def test_batch_equals_one_at_a_time(tiny):
    seqs = _seqs(tiny)
    batched = iv.capture(tiny, seqs)
    single = torch.cat([iv.capture(tiny, [s]) for s in seqs])
    assert_numerically_close(batched, single, tiny)
    logits = iv.patched_logits(tiny, seqs, batched[:, 1], 1)
    one = torch.cat([iv.patched_logits(tiny, [s], batched[i, 1], 1) for i, s in enumerate(seqs)])
    assert_numerically_close(logits, one, tiny)


def _episodes(n=6, seed=0):
    letters = "abcdefghijklmnopqrstuvwxyz"
    task = make_task("shift", [(a + b, c) for a, b, c in zip(letters, letters[1:], letters[2:])])
    return sample_episodes(task, n, k=3, split="dev", seed=seed)


def test_engine_episode_states_match_nnsight(tiny):
    eps = _episodes()
    theta, icl = engine.episode_states(tiny, eps, batch_size=4)
    dummies = [s for ep in eps for s in tiny.encode(DEFAULT_FORMAT.episode_prompts(ep)[1:])]
    assert_numerically_close(theta, iv.task_vectors(tiny, dummies, n_dummies=2), tiny)
    icl_seqs = tiny.encode([DEFAULT_FORMAT.episode_icl(ep) for ep in eps])
    assert torch.equal(icl, iv.patched_logits(tiny, icl_seqs, None, None).argmax(-1))


def _mixed_lengths(n=6):
    """Episodes of 2-letter and 6-letter inputs, interleaved: every batch of them pads its short prompts."""
    letters = "abcdefghijklmnopqrstuvwxyz"
    long = make_task("long", [(letters[i:i + 6], letters[i]) for i in range(18)])
    return [ep for pair in zip(_episodes(n), sample_episodes(long, n, k=3, split="dev", seed=0)) for ep in pair]


def test_episode_states_of_mixed_lengths_equal_each_alone(tiny):
    """Batched episodes of mixed lengths get the theta and ICL answer each gets alone (unpadded), on every tiny
    family; on the tiny Gemma 3 (sliding window of 6 tokens) the pads after a short suffix's cached prefix would
    take window places, so those batches run whole."""
    eps = _mixed_lengths()
    theta, icl = engine.episode_states(tiny, eps, batch_size=4)
    alone = [engine.episode_states(tiny, [ep]) for ep in eps]
    assert_numerically_close(theta, torch.cat([t for t, _ in alone]), tiny)
    assert torch.equal(icl, torch.cat([i for _, i in alone]))


def test_episode_states_by_length_pads_less_and_keeps_the_order(tiny_llama, monkeypatch):
    """by_length runs episodes of mixed lengths shortest first, so each batch pads less, and hands theta and the
    ICL answers back in the order given: the same as without it (theta up to float rounding)."""
    eps = _mixed_lengths()
    widths = []
    monkeypatch.setattr(engine, "suffix_batch", lambda m, mask, suffixes, r, f=engine.suffix_batch:
                        widths.append(max(map(len, suffixes))) or f(m, mask, suffixes, r))
    theta, icl = engine.episode_states(tiny_llama, eps, batch_size=4)
    given = widths[:]
    widths.clear()
    sorted_theta, sorted_icl = engine.episode_states(tiny_llama, eps, batch_size=4, by_length=True)
    assert widths == sorted(widths) and sum(widths) < sum(given)
    assert_numerically_close(sorted_theta, theta, tiny_llama)
    assert torch.equal(sorted_icl, icl)


def test_engine_sweep_matches_straightforward(tiny):
    eps = _episodes()
    theta, _ = engine.episode_states(tiny, eps)
    queries = tiny.encode([DEFAULT_FORMAT.query(ep.query[0]) for ep in eps])
    fast = engine.layer_sweep(tiny, queries, theta)
    for layer in range(tiny.n_layers):
        slow = iv.patched_logits(tiny, queries, theta[:, layer], layer).argmax(-1)
        assert torch.equal(fast[:, layer], slow), f"layer {layer}"
    assert torch.equal(engine.next_tokens(tiny, queries), iv.patched_logits(tiny, queries, None, None).argmax(-1))


@torch.no_grad()
def test_sweep_runs_only_the_layers_after_the_patch(tiny):
    """The sweep runs the last token only through the layers after L, from theta, and crops the prefix cache
    back after each layer: its final-normed states equal, bit for bit, those of a forward through every layer
    patched at L on the same cached prefix, for every layer and for a subset ending at the last layer (prompts
    longer than the tiny Gemma 3's sliding window of 6; its layers alternate sliding and full attention)."""
    seqs = _seqs(tiny)
    theta = iv.capture(tiny, seqs[::-1])  # another prompt's states: realistic values, not the query's own
    prefix_mask, cache = engine.cached_prefix(tiny, [s[:-1] for s in seqs])
    batch = engine.suffix_batch(tiny, prefix_mask, [[s[-1]] for s in seqs], 1)
    rows = torch.arange(len(seqs))
    last = tiny.n_layers - 1
    original = list(tiny.layers)
    for layers in (list(range(tiny.n_layers)), [last, 1]):
        fast = torch.stack(list(engine.sweep_states(tiny, seqs, theta, layers)), dim=1)
        full = torch.stack([engine.forward(tiny, batch, cache=copy.deepcopy(cache), patch={l: (rows, theta[:, l])})[0]
                            for l in layers], dim=1)
        for j, layer in enumerate(layers):
            assert torch.equal(fast[:, j], full[:, j]), f"layer {layer}"
        answers = engine.predict(tiny, full.flatten(0, 1)).view(len(seqs), len(layers))
        assert torch.equal(engine.layer_sweep(tiny, seqs, theta, layers), answers)
    assert all(a is b for a, b in zip(tiny.layers, original)) and len(tiny.layers) == len(original)  # put back


def test_sweep_chunking_does_not_change_answers(tiny_llama, monkeypatch):
    eps = _episodes(n=10)
    theta, _ = engine.episode_states(tiny_llama, eps)
    queries = tiny_llama.encode([DEFAULT_FORMAT.query(ep.query[0]) for ep in eps])
    whole = engine.layer_sweep(tiny_llama, queries, theta)
    monkeypatch.setattr(engine, "SWEEP_ROWS", 5)
    monkeypatch.setattr(engine, "HEAD_ROWS", 3)
    assert torch.equal(engine.layer_sweep(tiny_llama, queries, theta), whole)


@pytest.mark.parametrize("screen", [False, True], ids=["float32", "bf16-screened"])
def test_greedy_head_in_vocabulary_blocks_equals_one_product(tiny, monkeypatch, screen):
    """The blocked argmax, plain or bf16-screened, gives one product's argmax, ties included (the first maximum
    wins across blocks), also after the head's weights are edited in place (the screen's bf16 copy is remade)."""
    states = torch.randn(9, tiny.hf.config.hidden_size, generator=torch.Generator().manual_seed(0)).to(tiny.dtype)
    whole = tiny.unembed(states).argmax(-1)
    monkeypatch.setattr(head, "VOCAB_BLOCK", 64)  # the tiny vocabulary in four blocks, the last one short
    assert tiny.unembed.weight.shape[0] % 64 and torch.equal(head.greedy(tiny, states, screen=screen), whole)
    weight = tiny.unembed.weight
    with torch.no_grad():
        saved = weight[[3, 5, 131]].clone()
        # tokens 3, 5 (block 0) and 131 (block 2) tie: the first wins within a block and across blocks
        weight[3] = weight[5] = weight[131] = 50 * states[0] / states[0].norm() ** 2
        try:
            assert tiny.unembed(states[:1]).argmax(-1).item() == 3 == head.greedy(tiny, states[:1], screen).item()
        finally:
            weight[[3, 5, 131]] = saved


def test_screened_head_decides_near_ties_in_float32(tiny_float32, monkeypatch):
    """Near-ties that bf16 can get wrong: of tokens 10 (block 0) and 150 (block 2), the winner's logit is 40.004
    and the other's 40, but the winner's row adds a large part orthogonal to the state, whose bf16 rounding
    moves its logit by more than 0.004. The screen must keep both tokens and let float32 decide."""
    generator = torch.Generator().manual_seed(1)
    hidden = tiny_float32.hf.config.hidden_size
    monkeypatch.setattr(head, "VOCAB_BLOCK", 64)
    weight = tiny_float32.unembed.weight
    saved, inverted = weight[[10, 150]].clone(), 0
    try:
        for trial in range(40):
            state = torch.randn(1, hidden, generator=generator)
            unit = state[0] / state[0].norm() ** 2  # a row with logit 1
            noise = torch.randn(hidden, generator=generator) * 40 * unit.norm()
            noise -= (noise @ state[0]) * unit  # orthogonal to the state: no change to the float32 logit
            winner, loser = (150, 10) if trial % 2 else (10, 150)
            with torch.no_grad():
                weight[loser], weight[winner] = 40 * unit, 40.004 * unit + noise
            logits = tiny_float32.unembed(state)[0]
            assert logits[winner] > logits[loser] and logits.argmax().item() == winner
            low = torch.nn.functional.linear(state.to(torch.bfloat16), weight[[winner, loser]].to(torch.bfloat16))
            inverted += int(low[0, 0] < low[0, 1])
            assert head.greedy(tiny_float32, state, screen=True).item() == winner, trial
    finally:
        with torch.no_grad():
            weight[[10, 150]] = saved
    assert inverted >= 5, inverted  # bf16 alone would have named the wrong token that often


@pytest.mark.parametrize("hidden", [64, 640, head.SCREEN_MAX_HIDDEN])
def test_bf16_logits_stay_within_the_screens_bound(hidden):
    """|bf16 logit - float32 logit| <= SCREEN_SLACK |h| |w|, for rows aligned with the states (the largest
    logits, as an argmax's) and random ones, at every width the screen accepts."""
    generator = torch.Generator().manual_seed(hidden)
    states = torch.randn(64, hidden, generator=generator) * torch.rand(64, 1, generator=generator) * 100
    weight = torch.cat([states + 0.1 * torch.randn(64, hidden, generator=generator),
                        torch.randn(448, hidden, generator=generator)])
    exact = torch.nn.functional.linear(states, weight)
    low = torch.nn.functional.linear(states.to(torch.bfloat16), weight.to(torch.bfloat16)).float()
    bound = head.SCREEN_SLACK * states.norm(dim=-1, keepdim=True) * weight.norm(dim=-1)
    ratio = ((low - exact).abs() / bound).max().item()
    assert 0 < ratio <= 1, ratio


def test_screen_is_used_only_where_it_pays(tiny_float32, monkeypatch):
    """Screened: a float32 head without bias, of 8 vocabulary blocks or more, on a CPU with AMX; else exact."""
    assert not head.screen_pays(tiny_float32)  # a tiny head: its products are too small to gain

    def model(vocab=8 * head.VOCAB_BLOCK, bias=False, dtype=torch.float32):
        return types.SimpleNamespace(unembed=torch.nn.Linear(64, vocab, bias=bias, dtype=dtype))

    monkeypatch.setattr(head, "cpu_has_amx", lambda: True)
    assert head.screen_pays(model())
    assert not head.screen_pays(model(vocab=8 * head.VOCAB_BLOCK - 1))
    assert not head.screen_pays(model(bias=True))
    assert not head.screen_pays(model(dtype=torch.bfloat16))
    monkeypatch.setattr(head, "cpu_has_amx", lambda: False)
    assert not head.screen_pays(model())


def test_amx_is_read_from_the_cpu_flags(tmp_path):
    (tmp_path / "amx").write_text("flags\t\t: fpu avx2 avx512f avx512_bf16 amx_bf16 amx_tile\n")
    (tmp_path / "zen4").write_text("flags\t\t: fpu avx2 avx512f avx512_bf16 avx512_vnni\n")
    assert head.cpu_has_amx(str(tmp_path / "amx"))
    assert not head.cpu_has_amx(str(tmp_path / "zen4"))  # AVX512-BF16 alone: the screen was not faster there
    assert not head.cpu_has_amx(str(tmp_path / "missing"))  # not Linux


def test_layer_out_of_range_names_the_range(tiny_llama):
    seqs = _seqs(tiny_llama)
    theta = torch.zeros(tiny_llama.hf.config.hidden_size)
    with pytest.raises(ValueError, match=r"valid layers are 0\.\.3"):
        iv.patched_logits(tiny_llama, seqs, theta, 4)
    with pytest.raises(ValueError, match=r"0\.\.3"):
        engine.layer_sweep(tiny_llama, seqs, torch.zeros(4, theta.shape[0]), layers=[-1])


@pytest.mark.parametrize("family_model", ["tiny_llama"])
def test_traces_survive_nnsight_remote_simulation(family_model, request):
    """remote="local" serializes each trace as for NDIF, hides our modules, and runs it: same numbers."""
    model = request.getfixturevalue(family_model)
    seqs = _seqs(model)
    local = iv.capture(model, seqs)
    torch.testing.assert_close(iv.capture(model, seqs, remote="local"), local, atol=1e-5, rtol=0)
    patched = iv.patched_logits(model, seqs, local[:, 2], 2)
    torch.testing.assert_close(iv.patched_logits(model, seqs, local[:, 2], 2, remote="local"), patched,
                               atol=1e-5, rtol=0)


def test_bench_sweep_methods_agree(tiny_llama):
    """The benchmark's four sweep methods (straightforward, paper's KV cache, the engine before it skipped
    layers, engine) give equal answers."""
    from tv_utils.bench import bench_sweeps
    from tv_utils.protocol import Protocol

    table = bench_sweeps(tiny_llama, ["next_letter"], Protocol(k=3, n_dev=6))
    assert table["same_answers"].all() and len(table) == 4


def test_bench_child_reproduce_gets_the_device_and_dtype():
    """`bench --device cuda` must time the GPU: its reproduce child gets the same device, dtype and model."""
    from tv_utils.bench import child_command

    cmd = child_command("reproduce", "out", None, ["en_fr"], "float32", "cuda:1")
    assert cmd[cmd.index("--device") + 1] == "cuda:1" and cmd[cmd.index("--dtype") + 1] == "float32"
    assert "--model" not in cmd  # the default model, as in the parent
    cpu_default = child_command("reproduce", "out", "smollm2-135m", ["en_fr"], None, None)
    assert "--device" not in cpu_default and cpu_default[cpu_default.index("--model") + 1] == "smollm2-135m"


def test_hooks_are_removed_after_an_error_and_layer_stand_ins_are_not_nested(tiny_llama):
    from tv_utils.hooks import hooked, stand_in

    layer = tiny_llama.layers[0]
    with pytest.raises(ZeroDivisionError), hooked([(layer, lambda m, a, o: None)] * 2):
        assert len(layer._forward_hooks) == 2
        1 / 0
    assert not layer._forward_hooks  # both removed although the block raised
    originals = list(tiny_llama.layers)
    with stand_in(tiny_llama.layers, 1, torch.nn.Identity()):
        assert tiny_llama.layers[0] is tiny_llama.layers[1] is not originals[0]
        with pytest.raises(RuntimeError, match="not re-entrant"), stand_in(tiny_llama.layers, 2, torch.nn.Identity()):
            pass
    assert list(tiny_llama.layers) == originals


def test_the_one_nnsight_workaround_finds_the_wrapped_module(tiny_llama):
    """models.nnsight_wrapper_module reads nnsight's private `_module` (no public accessor in 0.8): this fails
    first when nnsight renames it."""
    from tv_utils.models import nnsight_wrapper_module

    assert nnsight_wrapper_module(tiny_llama.nn) is tiny_llama.hf
    with pytest.raises(RuntimeError, match="nnsight_wrapper_module"):
        nnsight_wrapper_module(object())
