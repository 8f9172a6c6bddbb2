"""Prompt text and tokens: the paper's `example:{x}->{y}` format and the one place answers are tokenized.

Answer conventions, all here:
- an answer is written after the arrow with a leading space (`example:dog-> chien`), so the model's
  next token after `->` is the answer's first token (`▁chien`). As in the paper's code, a task whose
  spaced answers the tokenizer splits badly is written without the space instead (`example:3->4`):
  Gemma reads ` 4` as a bare `▁` then `4`, and the space alone is no answer (`usable_task`);
- the answer's tokens are taken as they appear in that context (the tokens of `query + " " + y` after
  the query's), so tokenizers that merge or prefix spaces differently stay consistent;
- a prediction is the greedy next token; it is correct when its text, stripped of white space, equals
  the stripped text of the answer's first token (`hits`). As in the paper, which strips predictions
  before comparing, `Paris` and ` Paris` both count. Non-knowledge tasks keep only pairs whose answer
  is one token, so this is an exact match; knowledge answers may be longer ("New Delhi") and are
  matched on their first token, the paper's prefix match;
- a user's task may accept several answers to an input (`Task.accepted`): prompts show the first, and a
  prediction is a hit when it matches the first token of any of them (`accepted_ids`). Tasks with one answer
  per input are scored exactly as before.

The official code's conventions (`Protocol(prompts="paper", scoring="paper")`, roeehendel/icl_task_vectors) differ
by task type, and are here too: `usable_task(..., spacing="paper")` writes algorithmic and knowledge tasks with no
space (`example:a->b`, `example:France->Paris`) and mapping tasks (translation, linguistic) with a space before
the input and the output (`example: dog-> chien`), kept when at least SPACED_SHARE as many answers stay single
tokens by the official test (`"!" + answer` tokenizes to two tokens); knowledge and algorithmic tasks keep every
pair. `paper_hits` scores as the official code: the greedy token decoded, cut at the first new line, stripped, and
compared as a string with the answer: equal, or for knowledge tasks a prefix either way. (The official
translation scorer also accepts a WordNet synonym; no offline WordNet with French and Spanish installs from PyPI,
so translations are matched exactly here: a departure, README "Departures".)
"""

from __future__ import annotations

from dataclasses import dataclass, replace

import torch

from .tasks import Episode, Task

__all__ = ["accepted_ids", "answer_token_ids", "answers_token_ids", "decoded_answers", "DEFAULT_FORMAT", "encode",
           "hits", "paper_hits", "paper_match", "PromptFormat", "SPACED_SHARE", "SPACINGS", "usable_task"]


@dataclass(frozen=True)
class PromptFormat:
    """How a demonstration line looks and how lines are joined."""

    template: str = "example:{x}->{y}"
    separator: str = "\n"

    def __post_init__(self):
        if not self.template.endswith("{y}") or "{x}" not in self.template:
            raise ValueError(f"template must contain {{x}} and end with {{y}}, got {self.template!r}")

    def demo(self, x: str, y: str, spaced: bool = True) -> str:
        return self.template.format(x=x, y=" " + y if spaced else y)

    def query(self, x: str) -> str:
        return self.template[: -len("{y}")].format(x=x)

    def icl(self, demos, x: str, spaced: bool = True) -> str:
        """Demonstrations followed by the query, ending on the arrow."""
        return self.separator.join([self.demo(dx, dy, spaced) for dx, dy in demos] + [self.query(x)])

    def episode_icl(self, ep: Episode) -> str:
        """The episode's ICL prompt: its demonstrations, then its query."""
        return self.icl(ep.demos, ep.query[0], ep.spaced)

    def episode_prompts(self, ep: Episode) -> list[str]:
        """[ICL prompt with the real query, then one prompt per dummy query x']; they share the demos."""
        return [self.episode_icl(ep)] + [self.icl(ep.demos, d, ep.spaced) for d in ep.dummies]


DEFAULT_FORMAT = PromptFormat()


def encode(tokenizer, texts, prepend_ids=()) -> list[list[int]]:
    """Token ids per text, with the tokenizer's own special tokens plus `prepend_ids` (a BOS stand-in)."""
    ids = tokenizer(list(texts), add_special_tokens=True)["input_ids"]
    return [list(prepend_ids) + list(seq) for seq in ids]


def answer_token_ids(tokenizer, answer: str, fmt: PromptFormat = DEFAULT_FORMAT, spaced: bool = True) -> list[int]:
    """The answer's tokens as they follow `->` in a prompt (after a space unless spaced=False)."""
    return answers_token_ids(tokenizer, [answer], fmt, spaced)[0]


def answers_token_ids(tokenizer, answers: list[str], fmt: PromptFormat = DEFAULT_FORMAT,
                      spaced: bool = True) -> list[list[int]]:
    """answer_token_ids for many answers in two tokenizer calls."""
    if not answers:  # a task with no pair left (a tokenizer that splits every answer)
        return []
    context = fmt.query("x")
    space = " " if spaced else ""
    ctx = tokenizer(context, add_special_tokens=False)["input_ids"]
    full = tokenizer([context + space + a for a in answers], add_special_tokens=False)["input_ids"]
    bare = tokenizer([space + a for a in answers], add_special_tokens=False)["input_ids"]
    return [list(f[len(ctx):]) if f[: len(ctx)] == ctx and len(f) > len(ctx) else list(b)
            for f, b in zip(full, bare)]


# The paper's code keeps the spaced answers unless they leave under 70% as many scorable pairs as unspaced ones.
SPACED_SHARE = 0.7


SPACINGS = ("kit", "paper")  # how `usable_task` spaces a task's prompts


def usable_task(task: Task, tokenizer, fmt: PromptFormat = DEFAULT_FORMAT,
                spacing: str = "kit") -> tuple[Task, dict[str, int]]:
    """The task restricted to pairs this tokenizer can score, and each kept answer's target token.

    spacing="kit": a pair is scorable when its answer's first token is more than white space, and (unless the
    task allows multi-token answers) its only token. Answers are written after a space when that keeps at least
    SPACED_SHARE as many pairs as writing them without (`Task.spaced`); inputs never take a space. Numbers on
    Gemma (` 8` is `▁` + `8`) drop the space and score on the digit. spacing="paper": as the official code, by
    task type (`_paper_task`); a user's (custom) task, which the official code has no rule for, keeps the kit's.
    """
    if spacing not in SPACINGS:
        raise ValueError(f"unknown spacing {spacing!r}; valid spacings: {', '.join(SPACINGS)}")
    if spacing == "paper" and task.category != "custom":
        return _paper_task(task, tokenizer, fmt)
    answers = [y for _, y in task.pairs]
    forms = {spaced: _scorable(task, tokenizer, answers_token_ids(tokenizer, answers, fmt, spaced))
             for spaced in (True, False)}
    spaced = len(forms[True]) >= SPACED_SHARE * len(forms[False])
    targets = forms[spaced]
    kept = tuple(pair for pair in task.pairs if pair[1] in targets)
    return replace(task, pairs=kept, spaced=spaced), targets


def _paper_task(task: Task, tokenizer, fmt: PromptFormat) -> tuple[Task, dict[str, int]]:
    """The official code's version of one of the paper's tasks: mapping tasks (translation, linguistic) keep the
    answers that `"!" + answer` tokenizes into two tokens (mapping_task.py `_is_single_token`), spaced (input and
    output, `{" dog": " chien"}`) when that keeps at least SPACED_SHARE as many as unspaced; algorithmic and
    knowledge tasks keep every pair, unspaced. Targets are the answers' first tokens (for the kit's scorer)."""
    spaced = False
    if task.category in ("translation", "linguistic"):
        single = {sp: {y for _, y in task.pairs if len(tokenizer.tokenize("!" + (" " if sp else "") + y)) == 2}
                  for sp in (True, False)}
        spaced = len(single[True]) >= SPACED_SHARE * len(single[False])
        keep = single[spaced]
        task = replace(task, pairs=tuple(p for p in task.pairs if p[1] in keep),
                       accepted=tuple((x, ys) for x, ys in task.accepted if ys[0] in keep))
    if spaced:
        task = replace(task, pairs=tuple((" " + x, y) for x, y in task.pairs),
                       accepted=tuple((" " + x, ys) for x, ys in task.accepted))
    task = replace(task, spaced=spaced)
    answers = [y for _, y in task.pairs]
    first = {y: ids[0] for y, ids in zip(answers, answers_token_ids(tokenizer, answers, fmt, spaced)) if ids}
    return task, first


def _scorable(task: Task, tokenizer, token_ids: list[list[int]]) -> dict[str, int]:
    """{answer: target token} for the answers whose tokens (one list per pair of `task`) can be scored."""
    first = tokenizer.batch_decode([ids[:1] for ids in token_ids])
    return {y: ids[0] for (_, y), ids, text in zip(task.pairs, token_ids, first)
            if text.strip() and (task.multi_token_answers or len(ids) == 1)}


def accepted_ids(tokenizer, task: Task, episodes, fmt: PromptFormat = DEFAULT_FORMAT) -> torch.Tensor | None:
    """The first tokens of every answer each episode's query accepts, [n_episodes, most answers], the query's
    first answer (the target) first and short rows padded by repeating it; None when every query has one
    answer (then `hits` scores the target alone, as for the paper's tasks).

    `task` is the usable task the episodes come from (`usable_task`), whose spacing the answers follow; an
    accepted answer this tokenizer cannot score (see `usable_task`) is left out."""
    accepted = dict(task.accepted)
    if not any(ep.query[0] in accepted for ep in episodes):
        return None
    answers = [accepted.get(x, (y,)) for x, y in (ep.query for ep in episodes)]
    unique = list(dict.fromkeys(a for row in answers for a in row))
    token_ids = dict(zip(unique, answers_token_ids(tokenizer, unique, fmt, task.spaced)))
    first = dict(zip(unique, tokenizer.batch_decode([token_ids[a][:1] for a in unique])))
    scorable = {a for a in unique if first[a].strip() and (task.multi_token_answers or len(token_ids[a]) == 1)}
    rows = [[token_ids[row[0]][0]] + [token_ids[a][0] for a in row[1:] if a in scorable] for row in answers]
    width = max(map(len, rows))
    return torch.tensor([row + row[:1] * (width - len(row)) for row in rows])


def hits(tokenizer, predicted: torch.Tensor, target: torch.Tensor,
         accepted: torch.Tensor | None = None) -> torch.Tensor:
    """Which predicted token ids match the target ids (broadcast), comparing their stripped text.

    Tokens whose text is only white space, and ids beyond the tokenizer (a model's padded vocabulary),
    match only themselves. Only the ids present are decoded (a whole 262k vocabulary takes ~2 s).
    `accepted` ([target.numel(), n_answers], from `accepted_ids`): further tokens accepted for each target;
    a prediction matching any of its target's is a hit.
    """
    if accepted is not None:
        accepted = accepted.cpu()
        if accepted.ndim != 2 or accepted.shape[0] != target.numel():
            raise ValueError(f"accepted answers must be [targets, answers] with {target.numel()} rows (one per "
                             f"target), got shape {tuple(accepted.shape)}")
        correct = hits(tokenizer, predicted, target)
        for column in accepted.T:
            correct |= hits(tokenizer, predicted, column.reshape(target.shape))
        return correct
    predicted, target = torch.broadcast_tensors(predicted.cpu(), target.cpu())
    pairs = list(zip(predicted.flatten().tolist(), target.flatten().tolist()))
    size = len(tokenizer)
    text = {i: tokenizer.decode([i]).strip() if i < size else "" for i in {i for pair in pairs for i in pair}}
    same = [p == t or (text[p] != "" and text[p] == text[t]) for p, t in pairs]
    return torch.tensor(same, dtype=torch.bool).view(predicted.shape)


def decoded_answers(tokenizer, predicted) -> list[str]:
    """Each predicted token id as the official code reads it: decoded without special tokens, cut at the first
    new line (the example separator) and stripped."""
    texts = tokenizer.batch_decode([[int(i)] for i in predicted], skip_special_tokens=True)
    return [t.split("\n")[0].strip() for t in texts]


def paper_match(category: str, predicted: str, answer: str) -> bool:
    """The official rule for one decoded prediction against one answer (task.py `compare_outputs`): both stripped,
    equal; for knowledge tasks (`allow_prefix`), and for a user's tasks, whose answers may be several tokens long,
    both non-empty and one a prefix of the other."""
    predicted, answer = predicted.strip(), answer.strip()
    if category in ("knowledge", "custom"):
        return bool(predicted) and bool(answer) and (predicted.startswith(answer) or answer.startswith(predicted))
    return predicted == answer


def paper_hits(tokenizer, task: Task, episodes, predicted: torch.Tensor, answers=None) -> torch.Tensor:
    """Hits of predicted token ids ([n_episodes] or [n_episodes, n_layers]) under the official scoring: each
    decoded prediction (`decoded_answers`) against every answer its episode's query accepts (`paper_match`, by
    `task`'s category), or against `answers` (one tuple of accepted answers per episode, e.g. another task's)."""
    flat = predicted.cpu().reshape(len(episodes), -1)
    unique = sorted(set(flat.flatten().tolist()))
    text = dict(zip(unique, decoded_answers(tokenizer, unique)))
    answers = [task.answers(ep.query[0]) for ep in episodes] if answers is None else answers
    rows = [[any(paper_match(task.category, text[i], a) for a in accepted) for i in row]
            for row, accepted in zip(flat.tolist(), answers)]
    return torch.tensor(rows, dtype=torch.bool).view(predicted.shape)
