"""Prompt text and tokens: the paper's `example:{x}->{y}` format and the one place answers are tokenized.

Answer conventions, all here:
- an answer is written after the arrow with a leading space (`example:dog-> chien`), so the model's
  next token after `->` is the answer's first token (`▁chien`);
- the answer's tokens are taken as they appear in that context (the tokens of `query + " " + y` after
  the query's), so tokenizers that merge or prefix spaces differently stay consistent;
- a prediction is the greedy next token; it is correct when its text, stripped of white space, equals
  the stripped text of the answer's first token (`hits`). As in the paper, which strips predictions
  before comparing, `Paris` and ` Paris` both count. Non-knowledge tasks keep only pairs whose answer
  is one token, so this is an exact match; knowledge answers may be longer ("New Delhi") and are
  matched on their first token, the paper's prefix match.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from .tasks import Episode, Task


@dataclass(frozen=True)
class PromptFormat:
    """How a demonstration line looks and how lines are joined."""

    template: str = "example:{x}->{y}"
    separator: str = "\n"

    def __post_init__(self):
        if not self.template.endswith("{y}") or "{x}" not in self.template:
            raise ValueError(f"template must contain {{x}} and end with {{y}}, got {self.template!r}")

    def demo(self, x: str, y: str) -> str:
        return self.template.format(x=x, y=" " + y)

    def query(self, x: str) -> str:
        return self.template[: -len("{y}")].format(x=x)

    def icl(self, demos, x: str) -> str:
        """Demonstrations followed by the query, ending on the arrow."""
        return self.separator.join([self.demo(dx, dy) for dx, dy in demos] + [self.query(x)])

    def episode_prompts(self, ep: Episode) -> list[str]:
        """[ICL prompt with the real query, then one prompt per dummy query x']; they share the demos."""
        return [self.icl(ep.demos, ep.query[0])] + [self.icl(ep.demos, d) for d in ep.dummies]


DEFAULT_FORMAT = PromptFormat()


def encode(tokenizer, texts, prepend_ids=()) -> list[list[int]]:
    """Token ids per text, with the tokenizer's own special tokens plus `prepend_ids` (a BOS stand-in)."""
    ids = tokenizer(list(texts), add_special_tokens=True)["input_ids"]
    return [list(prepend_ids) + list(seq) for seq in ids]


def answer_token_ids(tokenizer, answer: str, fmt: PromptFormat = DEFAULT_FORMAT) -> list[int]:
    """The answer's tokens as they follow `->` in a prompt."""
    return answers_token_ids(tokenizer, [answer], fmt)[0]


def answers_token_ids(tokenizer, answers: list[str], fmt: PromptFormat = DEFAULT_FORMAT) -> list[list[int]]:
    """answer_token_ids for many answers in two tokenizer calls."""
    context = fmt.query("x")
    ctx = tokenizer(context, add_special_tokens=False)["input_ids"]
    full = tokenizer([context + " " + a for a in answers], add_special_tokens=False)["input_ids"]
    bare = tokenizer([" " + a for a in answers], add_special_tokens=False)["input_ids"]
    return [list(f[len(ctx):]) if f[: len(ctx)] == ctx and len(f) > len(ctx) else list(b)
            for f, b in zip(full, bare)]


def usable_task(task: Task, tokenizer, fmt: PromptFormat = DEFAULT_FORMAT) -> tuple[Task, dict[str, int]]:
    """The task restricted to pairs this tokenizer can score, and each kept answer's target token."""
    kept, targets = [], {}
    answers = [y for _, y in task.pairs]
    for (x, y), ids in zip(task.pairs, answers_token_ids(tokenizer, answers, fmt)):
        if ids and (task.multi_token_answers or len(ids) == 1):
            kept.append((x, y))
            targets[y] = ids[0]
    return Task(task.name, task.category, tuple(kept), task.description), targets


def hits(tokenizer, predicted: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Which predicted token ids match the target ids (broadcast), comparing their stripped text.

    Tokens whose text is only white space, and ids beyond the tokenizer (a model's padded vocabulary),
    match only themselves. Only the ids present are decoded (a whole 262k vocabulary takes ~2 s).
    """
    predicted, target = torch.broadcast_tensors(predicted.cpu(), target.cpu())
    pairs = list(zip(predicted.flatten().tolist(), target.flatten().tolist()))
    size = len(tokenizer)
    text = {i: tokenizer.decode([i]).strip() if i < size else "" for i in {i for pair in pairs for i in pair}}
    same = [p == t or (text[p] != "" and text[p] == text[t]) for p, t in pairs]
    return torch.tensor(same, dtype=torch.bool).view(predicted.shape)
