"""Vocabulary projection (paper Table 3): θ read through the final norm and the unembedding. The paper's figure,
under its protocol (`task_words`: the top words at each task's best layer + 2, against a control θ); and the
kit's reading at every layer (`vocabulary_projection`: top tokens per task and layer, and where the true answers
rank, a logit lens on θ), on the kit's conventions (`protocol.KIT`), as its stored tables were run."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import torch

import re

from .. import store
from ..experiments import default_layer, prepare_split
from ..protocol import KIT, PAPER, Protocol
from ..models import Model
from ..prompts import answers_token_ids
from ..tasks import TASK_NAMES

__all__ = ["answer_rank", "paper_top_words", "PAPER_WORDS", "project", "run", "task_words", "top_tokens",
           "vocabulary_projection"]


def _is_word(token: str) -> bool:
    t = token.strip()
    return len(t) >= 2 and t.replace("-", "").isalpha()


@torch.no_grad()
def project(model: Model, vectors: torch.Tensor) -> torch.Tensor:
    """Log-probabilities over the vocabulary of hidden states [N, H] read through final norm + unembedding."""
    h = model.final_norm(vectors.to(model.device, model.dtype))
    return torch.log_softmax(model.unembed(h).float(), dim=-1).cpu()


def answer_rank(logp: torch.Tensor, answer_ids: torch.Tensor) -> torch.Tensor:
    """Rank of each row's answer token among the vocabulary (0 = the top token; ties count in its favour)."""
    return (logp > logp.gather(1, answer_ids[:, None])).sum(1)


def top_tokens(model: Model, theta: torch.Tensor, k: int = 10, pool: int = 200) -> list[list[tuple[str, float]]]:
    """Top word-like tokens per vector (deduplicated on stripped lower-case text) with their probability."""
    out = []
    for logp in project(model, theta):
        values, ids = logp.topk(min(pool, logp.numel()))
        seen, tokens = set(), []
        for v, i in zip(values.tolist(), ids.tolist()):
            text = model.decode_token(i)
            key = text.strip().lower()
            if _is_word(text) and key not in seen:
                seen.add(key)
                tokens.append((text.strip(), float(np.exp(v))))
            if len(tokens) == k:
                break
        out.append(tokens)
    return out


def vocabulary_projection(model: Model, tasks=TASK_NAMES, layers=None, n: int = 20, k: int = 10, pool: int = 60,
                          protocol: Protocol = KIT) -> tuple[pd.DataFrame, pd.DataFrame]:
    """(top tokens of the mean theta per task and layer, rank of the true answers per task and layer).

    Every task's theta shares a large common component, so its raw top tokens start with the same few
    tokens for every task. `specific=True` rows drop tokens that rank high for more than a quarter of
    the tasks at that layer, which leaves the task-related ones. The rank table is a logit lens on
    theta: where the episode's own answer token ranks (0 = top).
    """
    layers = list(range(model.n_layers)) if layers is None else list(layers)
    candidates, rank_rows = [], []
    for task in tasks:
        s = prepare_split(model, task, "test", n, protocol, icl=False)
        name = s.task.name
        mean = s.theta.float().mean(0)  # [n_layers, H]
        for layer, tokens in zip(layers, top_tokens(model, mean[layers], pool)):
            for token, prob in tokens:
                candidates.append({"model": model.name, "task": name, "layer": layer, "token": token, "prob": prob})
        for layer in layers:
            logp = project(model, s.theta[:, layer].float())
            target_logp = logp.gather(1, s.target.cpu()[:, None])
            ranks = answer_rank(logp, s.target.cpu()).float()
            rank_rows.append({"model": model.name, "task": name, "layer": layer,
                              "median_rank": ranks.median().item(), "top1": (ranks == 0).float().mean().item(),
                              "mean_prob": target_logp.exp().mean().item()})
    cand = pd.DataFrame(candidates, columns=["model", "task", "layer", "token", "prob"])
    shared = cand.groupby(["layer", "token"])["task"].transform("nunique")
    cand["shared_by"] = shared
    limit = max(2, len(list(tasks)) // 4)
    frames = []
    for specific, part in (("raw", cand), ("specific", cand[shared <= limit])):
        part = part.groupby(["task", "layer"], sort=False).head(k).copy()
        part["rank"] = part.groupby(["task", "layer"], sort=False).cumcount()
        part["specific"] = specific == "specific"
        frames.append(part)
    top = pd.concat(frames, ignore_index=True)[["model", "task", "layer", "specific", "rank", "token", "prob",
                                                 "shared_by"]]
    return top, pd.DataFrame(rank_rows)


def run(model: Model, tasks=TASK_NAMES, n: int = 20, layer: int | None = None, out_dir: str | Path | None = None,
        figures: bool = True) -> dict:
    """`vocabulary_projection` at every layer, written as vocab_<model>_{top_tokens,answer_rank}.csv and,
    with `figures`, the task-specific top tokens at L (`layer`, else the best mean dev layer) and the rank
    curves; and, where a reproduce run of the model is stored, the paper's figure with its control:
    vocab_<model>_task_words.csv (`task_words` at that run's best layers + 2, on 50 test episodes as the
    official main.py). Returns {"layer": L, "top_tokens", "answer_rank", "task_words" (None without a run)}."""
    from .. import plots

    layer = default_layer(model, out_dir) if layer is None else model.check_layer(layer)
    top, ranks = vocabulary_projection(model, tasks, n=n)
    stem = store.results_stem("vocab", model.name, out_dir)
    store.save_table(top, f"{stem}_top_tokens.csv")
    store.save_table(ranks, f"{stem}_answer_rank.csv")
    if figures:
        store.save_figure(plots.top_tokens_table(top[top.specific], layer), f"{stem}_top_tokens")
        store.save_figure(plots.answer_rank_curves(ranks, highlight=layer), f"{stem}_answer_rank")
    words = None
    stored = store.precomputed(store.results_stem("reproduce", model.name, out_dir).name + "_results", out_dir)
    if stored is not None:
        best = dict(zip(stored.task, stored.best_layer.astype(int)))
        words = task_words(model, {t: best[t] for t in tasks if t in best}, PAPER, n=50)
        store.save_table(words, f"{stem}_task_words.csv")
    return {"layer": layer, "top_tokens": top, "answer_rank": ranks, "task_words": words}


PAPER_WORDS = 20  # scripts/figures/main.py lists the first 20 words of theta's top 100 tokens
LETTERS_ONLY = re.compile("^[a-zA-Z]+$")


def paper_top_words(model: Model, theta: torch.Tensor, k: int = PAPER_WORDS, pool: int = 100) -> list[list[str]]:
    """The official figure's top words of each vector [N, H]: its top `pool` tokens, stripped, letters only,
    repeats dropped ignoring case, the first k (scripts/figures/main.py `create_top_tokens_table`)."""
    out = []
    for logp in project(model, theta):
        seen, words = set(), []
        for i in logp.topk(min(pool, logp.numel())).indices.tolist():
            word = model.decode_token(i).strip()
            if LETTERS_ONLY.match(word) and word.lower() not in seen:
                seen.add(word.lower())
                words.append(word)
        out.append(words[:k])
    return out


def task_words(model: Model, best_layers: dict[str, int], protocol: Protocol, n: int = 50,
               offset: int = 2) -> pd.DataFrame:
    """Claim 5 as the paper shows it, with a control: per task, the top words of its mean θ (n test episodes) at
    its best dev layer + `offset` (the paper's figure), the share of them that are the task's answers (the first
    token of any answer, ignoring case), and the same share for the control, the mean of every task's mean θ at
    that layer (what all θs share). Beside it, where each episode's answers rank in its own θ: its dummies'
    (θ is read at a dummy query, so it has seen their inputs) and its query's (which θ never saw)."""
    splits = {t: prepare_split(model, t, "test", n, protocol, icl=False) for t in best_layers}
    layers = {t: min(model.n_layers - 1, best + offset) for t, best in best_layers.items()}
    means = {t: s.theta.float().mean(0) for t, s in splits.items()}  # [n_layers, H] per task
    control = torch.stack(list(means.values())).mean(0)
    rows = []
    for task, s in splits.items():
        layer = layers[task]
        answers = [y for _, y in s.task.pairs]
        first = {ids[0] for ids in answers_token_ids(model.tokenizer, answers, spaced=s.task.spaced) if ids}
        vocabulary = {model.decode_token(i).strip().lower() for i in first}
        words, control_words = paper_top_words(model, torch.stack([means[task][layer], control[layer]]))
        answer_of = dict(s.task.pairs)
        dummy_answers = [[answer_of[d] for d in ep.dummies] for ep in s.episodes]
        dummy_ids = torch.tensor([[ids[0] for ids in answers_token_ids(model.tokenizer, row, spaced=s.task.spaced)]
                                  for row in dummy_answers])
        logp = project(model, s.theta[:, layer].float())
        dummy_ranks = torch.stack([answer_rank(logp, column) for column in dummy_ids.T])  # [n_dummies, n]
        rows.append({"model": model.name, "task": task, "category": s.task.category, "best_layer": best_layers[task],
                     "layer": layer, "n": len(s.episodes), "top_words": ", ".join(words),
                     "task_share": _share(words, vocabulary), "control_words": ", ".join(control_words),
                     "control_share": _share(control_words, vocabulary),
                     "dummy_answer_median_rank": dummy_ranks.float().median().item(),
                     "query_answer_median_rank": answer_rank(logp, s.target.cpu()).float().median().item()})
    return pd.DataFrame(rows)


def _share(words: list[str], vocabulary: set[str]) -> float:
    """The share of `words` that are in `vocabulary` (lower case); 0 for no words."""
    return sum(w.lower() in vocabulary for w in words) / len(words) if words else 0.0
