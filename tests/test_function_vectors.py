"""Function vectors: head outputs add up to the attention block's output, and the indirect-effect patch
touches exactly one head."""

import torch

from tv_utils import function_vectors as fv
from tv_utils.batches import pad_left
from tv_utils.experiments import Protocol
from tv_utils.tasks import make_task

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
        torch.testing.assert_close(added, normed, atol=1e-5 if tiny.dtype == torch.float32 else 3e-2 * normed.abs().max().item(), rtol=0)


def test_indirect_effects_cover_every_head(tiny_llama):
    task = make_task("shift", list(zip("abcdefghijklmnop", "bcdefghijklmnopq")))
    effects, mean = fv.indirect_effects(tiny_llama, task, n=4, protocol=Protocol(k=3))
    assert len(effects) == tiny_llama.n_layers * fv.n_heads(tiny_llama) and effects["effect"].abs().sum() > 0
    heads = fv.top_heads(effects, 3)
    assert len(set(heads)) == 3
    vector = fv.function_vector(tiny_llama, mean, heads)
    assert vector.shape == (tiny_llama.hf.config.hidden_size,)


def test_adding_zero_changes_nothing(tiny_llama):
    from tv_utils import engine

    queries = tiny_llama.encode(["example:a->", "example:bc->"])
    zero = torch.zeros(tiny_llama.hf.config.hidden_size)
    plain = engine.next_tokens(tiny_llama, queries)
    assert torch.equal(fv.added_sweep(tiny_llama, queries, zero), plain[:, None].expand(-1, tiny_llama.n_layers))


def test_comparison_table_has_every_method(tiny_llama):
    tasks = [make_task("shift", list(zip("abcdefghijklmnop", "bcdefghijklmnopq"))),
             make_task("same", [(c, "x") for c in "abcdefghijklmnop"])]
    table, effects = fv.compare_methods(tiny_llama, tasks, k=2, n_effect=3, protocol=Protocol(k=3, n_dev=4, n_test=4))
    assert list(table["task"]) == ["shift", "same"] and len(table.attrs["heads"]) == 2
    assert table.loc[1, "mapping_rank"] == 1 / 16 and table.loc[0, "mapping_rank"] == 1.0
    methods = ["baseline", "icl", "tv", "tv_add", "fv", "icl_shuffled", "icl_shuffled_tv", "icl_shuffled_fv"]
    assert table[methods].apply(lambda c: c.between(0, 1).all()).all()
    assert len(effects) == 2 * tiny_llama.n_layers * fv.n_heads(tiny_llama)
