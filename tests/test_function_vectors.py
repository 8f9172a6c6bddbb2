"""Function vectors: head outputs add up to the attention block's output, and the indirect-effect patch
touches exactly one head."""

import pytest
import torch

from tv_utils.analyses import function_vectors as fv
from tv_utils.batches import pad_left
from tv_utils.protocol import Protocol
from tv_utils.tasks import make_task

pytestmark = pytest.mark.tiny

PROMPTS = ["example:ab-> c\nexample:q->", "example:hello->", "x->"]


def test_heads_add_up_to_the_attention_output(tiny):
    seqs = tiny.encode(PROMPTS)
    layer = 2
    proj = fv.out_projection(tiny, layer)
    seen = {}

    def keep(_module, _args, out):
        seen["out"] = out[:, -1].clone()

    handle = proj.register_forward_hook(keep)
    try:
        with torch.no_grad():
            tiny.base(**pad_left(tiny, seqs))
    finally:
        handle.remove()
    states = fv.head_states(tiny, seqs)
    assert states.shape == (len(seqs), tiny.n_layers, fv.n_heads(tiny), proj_in := states.shape[-1])
    assert proj_in * fv.n_heads(tiny) == tiny.hf.config.hidden_size
    total = fv.head_outputs(tiny, states[:, layer], layer).sum(1)
    if proj.bias is not None:
        total = total + proj.bias
    scale = seen["out"].abs().max().item()
    tol = 1e-5 if tiny.dtype == torch.float32 else 3e-2 * scale
    torch.testing.assert_close(total, seen["out"], atol=tol, rtol=0)
    block = tiny.layers[layer]
    if hasattr(block, "pre_feedforward_layernorm") and proj.bias is None:  # Gemma: normed before the residual
        added = fv.residual_contributions(tiny, states[:, layer], layer).sum(1)
        normed = block.post_attention_layernorm(seen["out"])
        torch.testing.assert_close(added, normed,
                                   atol=1e-5 if tiny.dtype == torch.float32 else 3e-2 * normed.abs().max().item(),
                                   rtol=0)


def test_indirect_effects_cover_every_head(tiny_llama):
    task = make_task("shift", list(zip("abcdefghijklmnop", "bcdefghijklmnopq")))
    effects, mean = fv.indirect_effects(tiny_llama, task, n=4, protocol=Protocol(k=3))
    assert len(effects) == tiny_llama.n_layers * fv.n_heads(tiny_llama) and effects["effect"].abs().sum() > 0
    heads = fv.top_heads(effects, 3)
    assert len(set(heads)) == 3
    vector = fv.function_vector(tiny_llama, mean, heads)
    assert vector.shape == (tiny_llama.hf.config.hidden_size,)
    # the heads' rows a prompt at a time (each prompt's cached prefix copied for its rows alone): same effects
    one_by_one, _ = fv.indirect_effects(tiny_llama, task, n=4, protocol=Protocol(k=3), rows_per_forward=1)
    torch.testing.assert_close(one_by_one["effect"].to_numpy(), effects["effect"].to_numpy(), atol=1e-6, rtol=0)


def test_adding_zero_changes_nothing(tiny_llama):
    from tv_utils import engine

    queries = tiny_llama.encode(["example:a->", "example:bc->"])
    zero = torch.zeros(tiny_llama.hf.config.hidden_size)
    plain = engine.next_tokens(tiny_llama, queries)
    assert torch.equal(fv.added_sweep(tiny_llama, queries, zero), plain[:, None].expand(-1, tiny_llama.n_layers))


def test_added_vector_is_the_own_state_plus_the_vector(tiny):
    """An `Added` vector gives the answers of a plain theta equal to each prompt's own states (from a full
    forward) plus the vector, at every layer, on every tiny family and dtype: its own states come from the last
    token run once on the cached prefix, which is then cropped back (Gemma 3's sliding layers included)."""
    from tv_utils import engine

    queries = tiny.encode(PROMPTS)
    vector = torch.randn(tiny.n_layers, tiny.hf.config.hidden_size, generator=torch.Generator().manual_seed(1))
    _, own = engine.next_tokens(tiny, queries, states=True)
    plain, added = engine.layer_sweeps(tiny, queries, [own + vector.to(own.dtype), engine.Added(vector)])
    assert torch.equal(plain, added)
    assert not torch.equal(added, engine.layer_sweep(tiny, queries, own))  # the vector changed answers


def test_nothing_added_after_the_last_layer_is_the_prompt_as_it_is(tiny_float32):
    """The protocol's zero-shot baseline (and the shuffled-label ICL answers) come from a zero vector added after
    the last layer, which shares the task vector's cached query prefixes: the answers of a plain forward of each
    prompt, on every tiny family (Gemma 3's sliding layers included)."""
    from tv_utils import engine

    queries = tiny_float32.encode(PROMPTS + ["example:cat", "zebra", "01", "q q", "xyz->a\n"])  # varied last tokens
    nothing = engine.Added(torch.zeros(tiny_float32.hf.config.hidden_size))
    unpatched = engine.layer_sweeps(tiny_float32, queries, [nothing], [[tiny_float32.n_layers - 1]])[0][:, 0]
    assert torch.equal(unpatched, engine.next_tokens(tiny_float32, queries))
    assert len(set(unpatched.tolist())) > 1  # the prompts differ in their answers: the check can tell them apart


def test_several_vectors_share_their_prompts_work_and_answer_as_one_at_a_time(tiny_llama, monkeypatch):
    """added_sweeps gives each vector the answers added_sweep gives it alone (its own layers), while the prompts
    before their last token run once for all vectors, and one forward per layer serves every vector patched there."""
    from tv_utils import engine

    queries = tiny_llama.encode(PROMPTS)
    last = tiny_llama.n_layers - 1
    toward = [tiny_llama.hf.lm_head.weight[t].detach() * 1e3 for t in (7, 3)]  # a token's row, scaled: it wins
    vectors = [torch.zeros(tiny_llama.hf.config.hidden_size), *toward, torch.randn(tiny_llama.hf.config.hidden_size,
                                                                                  generator=torch.Generator().manual_seed(0))]
    layers = [None, [last, 1], [last], [0, 2]]
    alone = [fv.added_sweep(tiny_llama, queries, v, ls) for v, ls in zip(vectors, layers)]
    prefixes, forwards = [], []
    monkeypatch.setattr(engine, "cached_prefix", lambda *a, f=engine.cached_prefix: prefixes.append(1) or f(*a))
    monkeypatch.setattr(engine, "run_after", lambda *a, f=engine.run_after: forwards.append(a[3]) or f(*a))
    together = fv.added_sweeps(tiny_llama, queries, vectors, layers)
    assert len(prefixes) == 1 and forwards == list(range(tiny_llama.n_layers))  # not 4 + 2 + 1 + 2 forwards
    assert all(torch.equal(a, b) for a, b in zip(alone, together))
    assert (together[1][:, 0] == 7).all() and (together[2][:, 0] == 3).all()  # each vector got its own rows


def test_comparison_table_has_every_method(tiny_llama):
    tasks = [make_task("shift", list(zip("abcdefghijklmnop", "bcdefghijklmnopq"))),
             make_task("same", [(c, "x") for c in "abcdefghijklmnop"])]
    run = fv.compare_methods(tiny_llama, tasks, ks=(1, 3), n_effect=3, protocol=Protocol(k=3, n_dev=4, n_test=4))
    table = run.table
    assert list(table["task"]) == ["shift", "same"] and run.k in (1, 3) and len(run.heads) == run.k
    assert table.loc[1, "mapping_rank"] == 1 / 16 and table.loc[0, "mapping_rank"] == 1.0
    methods = ["baseline", "icl", "tv", "tv_add", "fv", "icl_shuffled", "icl_shuffled_tv", "icl_shuffled_fv"]
    assert table[methods].apply(lambda c: c.between(0, 1).all()).all()
    assert len(run.effects) == 2 * tiny_llama.n_layers * fv.n_heads(tiny_llama)
    assert sorted(run.by_k.k.unique()) == [1, 3] and len(run.by_k) == 4
    chosen = run.by_k[run.by_k.k == run.k].set_index("task")
    assert (chosen.accuracy == table.set_index("task").fv).all() and \
        (chosen.layer == table.set_index("task").fv_layer).all()
    assert set(run.per_layer.method) == {"tv", "tv_add", "fv"} and len(run.per_layer) == 2 * 3 * tiny_llama.n_layers
    fixed = fv.compare_methods(tiny_llama, tasks[:1], k=2, ks=(1,), n_effect=3,
                               protocol=Protocol(k=3, n_dev=4, n_test=4))
    assert fixed.k == 2 and sorted(fixed.by_k.k.unique()) == [1, 2]


def test_adding_a_vector_after_the_task_vector(tiny_llama):
    """A zero function vector leaves the task-vector answers as they are; a large one at the last layer wins."""
    from tv_utils import engine

    seqs = tiny_llama.encode(PROMPTS)
    theta = engine.forward(tiny_llama, pad_left(tiny_llama, tiny_llama.encode(PROMPTS[::-1])), capture=True)[1]
    zero = torch.zeros(tiny_llama.hf.config.hidden_size)
    sweep = engine.layer_sweep(tiny_llama, seqs, theta)
    for layer in range(tiny_llama.n_layers - 1):
        assert torch.equal(fv.replaced_then_added(tiny_llama, seqs, theta[:, layer], layer, zero, layer + 1),
                           sweep[:, layer])
    big = tiny_llama.hf.lm_head.weight[7] * 1e3  # the unembedding row of token 7, scaled: it must win
    last = tiny_llama.n_layers - 1
    assert (fv.replaced_then_added(tiny_llama, seqs, theta[:, 0], 0, big, last) == 7).all()


def test_several_vectors_table(tiny_llama):
    task = make_task("shift", list(zip("abcdefghijklmnop", "bcdefghijklmnopq")))
    table = fv.several_vectors(tiny_llama, [task], heads=[(1, 0), (2, 1)], n_effect=3,
                               protocol=Protocol(k=3, n_dev=4, n_test=4))
    assert list(table.method)[:2] == ["task vector", "mean θ of 4 dev episodes"]
    assert table.accuracy.between(0, 1).all()
    if len(table) == 3:  # the task vector's layer was not the last
        assert table.method[2] == "task vector + function vector" and table.add_layer[2] > table.layer[2]


def test_head_patch_by_hand_equals_the_indirect_effects(tiny_llama):
    """The plain-nnsight patch of one head (the notebook's) gives the same effect as the all-heads pass."""
    from tv_utils.experiments import sample_split
    from tv_utils.prompts import DEFAULT_FORMAT

    task, protocol = make_task("shift", list(zip("abcdefghijklmnop", "bcdefghijklmnopq"))), Protocol(k=3)
    effects, mean = fv.indirect_effects(tiny_llama, task, n=4, protocol=protocol)
    _, episodes, target = sample_split(tiny_llama, task, "dev", 4, protocol, DEFAULT_FORMAT)
    shuffled = tiny_llama.encode([DEFAULT_FORMAT.episode_icl(fv.shuffled_labels(ep, protocol.seed)) for ep in episodes])
    clean = fv.head_patched_probs(tiny_llama, shuffled, target, 1, 0, None)
    for layer, head in [(1, 0), (2, 1), (0, 1)]:
        patched = fv.head_patched_probs(tiny_llama, shuffled, target, layer, head, mean[layer, head])
        expected = effects[(effects.layer == layer) & (effects["head"] == head)].effect.item()
        assert abs((patched - clean).mean().item() - expected) <= 1e-6 + 1e-3 * abs(expected)
    big = fv.head_patched_probs(tiny_llama, shuffled, target, 1, 0, mean[1, 0] * 50)
    assert not torch.allclose(big, clean)
