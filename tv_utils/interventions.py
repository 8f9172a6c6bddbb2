"""The method in nnsight: capture the last-token hidden state at layer L, and patch it into another prompt.

    theta   = hidden state after layer L at the last token (`->`) of `demos + x' ->`   (A: learn)
    answer  = next token of `x ->` with its layer-L last-token state replaced by theta  (f: apply)

Layer outputs are `[batch, seq, hidden]` tensors in most transformers-5 models but tuples for some
(GPT-J); `batches.layer_hidden` (and the same two lines inside each trace) takes the tensor either way.
Prompts are left-padded, so the last token is at -1.
Each trace lives in its own small function whose locals are only nnsight envoys, the batch and tensors
(remote execution pickles them), and loops are plain `for` loops (nnsight cannot trace comprehensions).

`remote=True` sends a trace to NDIF (a model from `models.load_remote`, an NDIF API key);
`remote="local"` runs nnsight's local simulation of that path (serialize, hide our modules, run), which
the tests use. Trace bodies therefore only touch nnsight envoys and torch, never tv_utils objects.
"""

from __future__ import annotations

import torch

from .batches import ROWS, chunks, pad_left
from .models import Model, check_finite

__all__ = ["capture", "patched_answers", "patched_logits", "reference_protocol", "task_vectors", "theta_device"]


def _capture_trace(lm, layers, batch, remote, logits_to_keep):
    """One nnsight trace: save every layer's output at the last token."""
    with lm.trace(batch, logits_to_keep=logits_to_keep, remote=remote):
        states = list().save()
        for layer in layers:
            output = layer.output
            hidden = output[0] if isinstance(output, tuple) else output
            states.append(hidden[:, -1])
    return states


def _patch_trace(lm, target, values, batch, remote, logits_to_keep):
    """One nnsight trace: write `values` over the last token's output of `target` (or nothing if None)."""
    with lm.trace(batch, logits_to_keep=logits_to_keep, remote=remote):
        if target is not None:
            output = target.output
            hidden = output[0] if isinstance(output, tuple) else output
            hidden[:, -1] = values
        logits = lm.output.logits[:, -1].save()
    return logits


def _answers_trace(lm, targets, values, batch, remote, logits_to_keep):
    """One nnsight trace, one invoke per target: write that invoke's values over the last token's output of
    its target (nothing if None); only the greedy token ids and the largest |logit| (NaN check) come back."""
    with lm.trace(logits_to_keep=logits_to_keep, remote=remote) as tracer:
        answers = list().save()
        largest = list().save()
        for target, value in zip(targets, values):
            with tracer.invoke(batch):
                if target is not None:
                    output = target.output
                    hidden = output[0] if isinstance(output, tuple) else output
                    hidden[:, -1] = value
                logits = lm.output.logits[:, -1]
                answers.append(logits.argmax(-1))
                largest.append(logits.abs().max())
    return answers, largest


@torch.no_grad()
def capture(model: Model, seqs: list[list[int]], batch_size: int | None = ROWS, remote: bool | str = False,
            logits_to_keep: int = 1) -> torch.Tensor:
    """Last-token hidden state after every layer: [n_prompts, n_layers, hidden].

    logits_to_keep=1 computes the head for the last position only (0: every position, as a plain
    forward would; the benchmark's straightforward method does that)."""
    out = []
    for part in chunks(len(seqs), batch_size or len(seqs)):  # None: one batch (one NDIF request)
        states = _capture_trace(model.nn, model.nn_layers(), pad_left(model, seqs[part]), remote, logits_to_keep)
        out.append(torch.stack(states, dim=1).to(theta_device(model)))
    return check_finite(model, torch.cat(out), "hidden states")


@torch.no_grad()
def patched_logits(model: Model, seqs: list[list[int]], theta: torch.Tensor, layer: int | None,
                   batch_size: int = ROWS, remote: bool | str = False, logits_to_keep: int = 1) -> torch.Tensor:
    """Next-token logits [n_prompts, vocab] with the last token's layer-`layer` state set to theta.

    theta is [hidden] (one vector for all prompts) or [n_prompts, hidden]; layer=None runs unpatched.
    """
    if layer is not None:
        model.check_layer(layer)
    theta = theta.expand(len(seqs), -1) if theta is not None and theta.dim() == 1 else theta
    target = model.nn_layers()[layer] if layer is not None else None
    out = []
    for part in chunks(len(seqs), batch_size):
        values = theta[part].to(model.dtype) if target is not None else None
        logits = _patch_trace(model.nn, target, values, pad_left(model, seqs[part]), remote, logits_to_keep)
        out.append(logits.float().to(theta_device(model)))
    return check_finite(model, torch.cat(out), "logits")


@torch.no_grad()
def patched_answers(model: Model, seqs: list[list[int]], theta: torch.Tensor | None, layers,
                    batch_size: int | None = ROWS, remote: bool | str = False) -> torch.Tensor:
    """Greedy next token [n_prompts, len(layers)] with theta [n_prompts, n_layers, hidden] written at each
    layer in turn (layers=[None]: unpatched). All layers of a batch go in one trace, one invoke each, and
    only token ids come back: one NDIF request per batch, a few bytes per answer instead of a vocabulary
    of logits. batch_size=None sends all prompts at once."""
    layers = [None if layer is None else model.check_layer(layer) for layer in layers]
    envoys = model.nn_layers()
    targets = [None if layer is None else envoys[layer] for layer in layers]
    out = []
    for part in chunks(len(seqs), batch_size or len(seqs)):
        values = [None if layer is None else theta[part, layer].to(model.dtype) for layer in layers]
        answers, largest = _answers_trace(model.nn, targets, values, pad_left(model, seqs[part]), remote, 1)
        check_finite(model, torch.stack(largest).float(), "logits")
        out.append(torch.stack(answers, dim=1).to(theta_device(model)))
    return torch.cat(out)


def theta_device(model: Model) -> torch.device:
    """Where results live: the model's device, or the CPU for a remote (meta) model."""
    return model.device if model.device.type != "meta" else torch.device("cpu")


def task_vectors(model: Model, seqs: list[list[int]], n_dummies: int, **kw) -> torch.Tensor:
    """theta per episode for all layers, averaged over its dummy prompts: [n_episodes, n_layers, hidden].

    `seqs` holds each episode's dummy prompts consecutively (n_dummies per episode).
    """
    states = capture(model, seqs, **kw)
    return states.view(-1, n_dummies, *states.shape[1:]).mean(dim=1)


@torch.no_grad()
def reference_protocol(model: Model, task, protocol=None, fmt=None, remote: bool | str = False,
                       batch_size: int | None = ROWS) -> dict:
    """The paper's protocol for one task, spelled out with the traces above (`experiments.run_tasks` computes
    the same numbers with the fast engine): dummies -> theta -> patched sweep on dev -> best layer -> test.
    Returns each method's hits per episode (dev: [n_dev, n_layers]) and accuracies. It only uses nnsight
    traces, so it also runs on NDIF (remote=True) or in nnsight's simulation ("local")."""
    from .prompts import DEFAULT_FORMAT, usable_task
    from .protocol import PAPER, best_of, score
    from .tasks import get_task, sample_episodes

    p, fmt = protocol or PAPER, fmt or DEFAULT_FORMAT
    usable, answer_ids = usable_task(get_task(task) if isinstance(task, str) else task, model.tokenizer, fmt,
                                     p.prompts)
    run = dict(batch_size=batch_size, remote=remote)

    def split(name: str, n: int):
        episodes = sample_episodes(usable, n, p.k, p.n_dummies, name, p.seed, p.sampling)
        dummies = model.encode([prompt for ep in episodes for prompt in fmt.episode_prompts(ep)[1:]])
        theta = task_vectors(model, dummies, p.n_dummies, **run)  # A(S): [episodes, layers, hidden]
        queries = model.encode([fmt.query(ep.query[0]) for ep in episodes])
        return episodes, theta, queries, torch.tensor([answer_ids[ep.query[1]] for ep in episodes])

    def scored(predicted, episodes, target) -> torch.Tensor:  # hits per episode (and layer), by the protocol's rule
        return score(model, usable, episodes, predicted.cpu(), target, p.scoring, fmt)

    dev_episodes, theta, queries, dev_target = split("dev", p.n_dev)
    dev_pred = patched_answers(model, queries, theta, range(model.n_layers), **run).cpu()  # f(x; θ)
    dev_hits = scored(dev_pred, dev_episodes, dev_target)
    dev_acc = dev_hits.double().mean(0).tolist()
    best = best_of(list(range(model.n_layers)), dev_acc)
    episodes, theta, queries, target = split("test", p.n_test)
    icl = model.encode([fmt.episode_icl(ep) for ep in episodes])
    pred = {"baseline": patched_answers(model, queries, None, [None], **run)[:, 0].cpu(),
            "icl": patched_answers(model, icl, None, [None], **run)[:, 0].cpu(),
            "tv": patched_answers(model, queries, theta, [best], **run)[:, 0].cpu()}
    out = {f"{m}_hits": scored(pred[m], episodes, target) for m in pred} | {f"{m}_pred": pred[m] for m in pred}
    accuracies = {m: out[f"{m}_hits"].double().mean().item() for m in ("baseline", "icl", "tv")}
    return {**out, **accuracies, "best_layer": best, "dev_acc": dev_acc, "dev_hits": dev_hits, "dev_pred": dev_pred,
            "task": usable, "dev_episodes": dev_episodes, "test_episodes": episodes, "dev_target": dev_target,
            "test_target": target}
