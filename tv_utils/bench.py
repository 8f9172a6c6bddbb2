"""`python -m tv_utils bench`: the layer sweep three ways, nnsight vs plain hooks, and end-to-end
reproduce, timed side by side in one process on the same inputs, with ratios.

Sweep methods (theta for every dev episode, then every layer x every dev query):
- straightforward: nnsight as a first version would use it: theta from each dummy prompt in full, and for
  each layer the whole query prompt again, with the model's default head (logits for every position);
- kv-cache (the paper's code): theta from full dummy prompts; the query minus its last token cached once,
  then for each layer only the last token is re-run (batch = queries) and read through the head;
- engine: `engine.episode_states` + `engine.layer_sweep` (shared demo prefix, all layers in one batch).
All three must give the same answers; the table says so.
"""

from __future__ import annotations

import copy
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pandas as pd
import torch

from . import engine
from . import interventions as iv
from .batches import chunks, layer_hidden, pad_left
from .experiments import PAPER, Protocol, summarize
from .models import Model
from .prompts import DEFAULT_FORMAT, usable_task
from .tasks import TASK_NAMES, get_task, sample_episodes


def _sync(model: Model) -> None:
    if model.device.type == "cuda":
        torch.cuda.synchronize()


def timed(model: Model, fn, *args):
    _sync(model)
    start = time.perf_counter()
    out = fn(*args)
    _sync(model)
    return out, time.perf_counter() - start


def _dev_inputs(model: Model, task: str, protocol: Protocol):
    usable, _ = usable_task(get_task(task), model.tokenizer)
    episodes = sample_episodes(usable, protocol.n_dev, protocol.k, protocol.n_dummies, "dev", protocol.seed)
    dummies = [s for ep in episodes for s in model.encode(DEFAULT_FORMAT.episode_prompts(ep)[1:])]
    queries = model.encode([DEFAULT_FORMAT.query(ep.query[0]) for ep in episodes])
    return episodes, dummies, queries


def sweep_straightforward(model: Model, episodes, dummies, queries, n_dummies: int) -> torch.Tensor:
    theta = iv.task_vectors(model, dummies, n_dummies, logits_to_keep=0)
    cols = []
    for layer in range(model.n_layers):
        cols.append(iv.patched_logits(model, queries, theta[:, layer], layer, logits_to_keep=0).argmax(-1))
    return torch.stack(cols, dim=1)


@torch.no_grad()
def sweep_kv_cache(model: Model, episodes, dummies, queries, n_dummies: int) -> torch.Tensor:
    _, states, _ = engine.forward(model, pad_left(model, dummies), capture=True)
    theta = states.view(-1, n_dummies, *states.shape[1:]).mean(1)
    prefix_mask, cache = engine.cached_prefix(model, [q[:-1] for q in queries])
    batch = engine.suffix_batch(model, prefix_mask, [[q[-1]] for q in queries], 1)
    rows = torch.arange(len(queries), device=model.device)
    cols = []
    for layer in range(model.n_layers):
        final, _, _ = engine.forward(model, batch, cache=copy.deepcopy(cache), patch={layer: (rows, theta[:, layer])})
        cols.append(engine.predict(model, final))
    return torch.stack(cols, dim=1)


def sweep_engine(model: Model, episodes, dummies, queries, n_dummies: int) -> torch.Tensor:
    theta, _ = engine.episode_states(model, episodes, icl=False)
    return engine.layer_sweep(model, queries, theta)


SWEEPS = {"straightforward (nnsight)": sweep_straightforward, "kv-cache (paper's code)": sweep_kv_cache,
          "engine": sweep_engine}


def bench_sweeps(model: Model, tasks, protocol: Protocol = PAPER, methods=tuple(SWEEPS)) -> pd.DataFrame:
    """Seconds per method over the tasks' full layer sweeps, and whether answers equal the engine's."""
    rows = []
    for task in tasks:
        inputs = _dev_inputs(model, task, protocol)
        answers = {}
        for name in methods:
            answers[name], seconds = timed(model, SWEEPS[name], model, *inputs, protocol.n_dummies)
            rows.append({"task": task, "method": name, "seconds": seconds})
        for row in rows[-len(methods):]:
            row["same_answers"] = bool(torch.equal(answers[row["method"]].cpu(), answers["engine"].cpu()))
    df = pd.DataFrame(rows)
    total = df.groupby("method", sort=False).agg(seconds=("seconds", "sum"), same_answers=("same_answers", "all"))
    total["x_slower_than_engine"] = total["seconds"] / total.loc["engine", "seconds"]
    return total.reset_index()


def _hook_capture(model: Model, seqs, batch_size: int = 32) -> torch.Tensor:
    """iv.capture's work with plain forward hooks instead of nnsight."""
    out = []
    for part in chunks(len(seqs), batch_size):
        states = []
        handles = [layer.register_forward_hook(lambda m, a, o: states.append(layer_hidden(o)[:, -1]))
                   for layer in model.layers]
        try:
            with torch.no_grad():
                model.hf(**pad_left(model, seqs[part]), logits_to_keep=1)
        finally:
            for h in handles:
                h.remove()
        out.append(torch.stack(states, dim=1))
    return torch.cat(out)


def _hook_patch(model: Model, seqs, theta, layer: int, batch_size: int = 32) -> torch.Tensor:
    """iv.patched_logits's work with a plain forward hook instead of nnsight."""
    out = []
    for part in chunks(len(seqs), batch_size):
        def write(m, a, o, values=theta[part]):
            layer_hidden(o)[:, -1] = values

        handle = model.layers[layer].register_forward_hook(write)
        try:
            with torch.no_grad():
                out.append(model.hf(**pad_left(model, seqs[part]), logits_to_keep=1).logits[:, -1].float())
        finally:
            handle.remove()
    return torch.cat(out)


def bench_nnsight_overhead(model: Model, task: str = "en_fr", protocol: Protocol = PAPER, repeats: int = 3):
    """Capture all layers and patch one layer, nnsight vs plain hooks, on the same batches (best of n)."""
    _, dummies, queries = _dev_inputs(model, task, protocol)
    layer = model.n_layers // 2
    theta = iv.capture(model, queries)[:, layer]
    jobs = {
        "capture all layers": (lambda: iv.capture(model, dummies), lambda: _hook_capture(model, dummies)),
        f"patch layer {layer}": (lambda: iv.patched_logits(model, queries, theta, layer),
                                 lambda: _hook_patch(model, queries, theta, layer)),
    }
    rows = []
    for job, (with_nnsight, with_hooks) in jobs.items():
        best = {}
        for name, fn in (("nnsight", with_nnsight), ("hooks", with_hooks)):
            results = [timed(model, fn) for _ in range(repeats)]
            best[name] = min(s for _, s in results)
            best[name + "_out"] = results[0][0]
        rows.append({"job": job, "nnsight_s": best["nnsight"], "hooks_s": best["hooks"],
                     "overhead": best["nnsight"] / best["hooks"] - 1,
                     "same_values": bool(torch.allclose(best["nnsight_out"].float(), best["hooks_out"].float(),
                                                        atol=1e-3, rtol=1e-3))})
    return pd.DataFrame(rows)


def bench_reproduce(model_name: str | None, tasks=TASK_NAMES, dtype: str | None = None) -> tuple[dict, pd.DataFrame]:
    """`python -m tv_utils reproduce` as a child process: its reported time, its peak RSS, and its results."""
    with tempfile.TemporaryDirectory() as out:
        cmd = [sys.executable, "-m", "tv_utils", "reproduce", "--out", out, "--no-figures", "--tasks", *tasks]
        cmd += ["--model", model_name] if model_name else []
        cmd += ["--dtype", dtype] if dtype else []
        start = time.perf_counter()
        proc = subprocess.run(cmd, capture_output=True, text=True, check=True)
        wall = time.perf_counter() - start
        results = pd.read_csv(next(Path(out).glob("reproduce_*_results.csv")))
    line = next(l for l in proc.stdout.splitlines() if " tasks in " in l)
    seconds = float(line.split(" tasks in ")[1].split(" s")[0])
    peak = float(line.split("peak RSS ")[1].split(" GB")[0])  # the child's own, as it reports it
    row = {"dtype": dtype or "default", "tasks": len(tasks), "seconds_excluding_load": seconds,
           "wall_with_load": wall, "peak_rss_gb": peak}
    return row, results


def bench_dtypes(model_name: str | None, dtypes=("float32", "bfloat16"), tasks=TASK_NAMES) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Full reproduce once per dtype, side by side: (time table, mean accuracy per category and dtype).

    The time table also counts, against the first dtype, the tasks whose best layer moved and the largest
    per-task change in each accuracy."""
    times, accuracy, first = [], [], None
    for dtype in dtypes:
        row, results = bench_reproduce(model_name, tasks, dtype)
        if first is None:
            first = results
        else:
            row["best_layer_moved"] = int((results["best_layer"] != first["best_layer"]).sum())
            for col in ("baseline", "icl", "tv"):
                row[f"max_task_diff_{col}"] = (results[col] - first[col]).abs().max()
        times.append(row)
        accuracy.append(summarize(results).assign(dtype=dtype))
    times = pd.DataFrame(times)
    times["x_faster_than_first"] = times["seconds_excluding_load"].iloc[0] / times["seconds_excluding_load"]
    table = pd.concat(accuracy).pivot(index="category", columns="dtype", values=["baseline", "icl", "tv"])
    return times, table.reindex(index=accuracy[0]["category"]).reindex(columns=list(dtypes), level=1)


def cpu_flags() -> str:
    """The CPU's model and the flags that decide bf16 speed (AVX2 / AVX512-BF16 / AMX)."""
    try:
        info = Path("/proc/cpuinfo").read_text()
    except OSError:
        return "unknown CPU"
    model = next((l.split(":", 1)[1].strip() for l in info.splitlines() if l.startswith("model name")), "?")
    flags = set(next((l.split(":", 1)[1].split() for l in info.splitlines() if l.startswith("flags")), []))
    shown = [f for f in ("avx2", "avx512f", "avx512_bf16", "amx_bf16") if f in flags]
    return f"{model}; {' '.join(shown) or 'no AVX2'}"


def word_tokenizer(vocab_size: int):
    """A word-level tokenizer over every word of the tasks (one token per word, ` word` after a space), for
    throughput runs of randomly initialised models with realistic prompt lengths."""
    from tokenizers import Regex, Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    words = {"example", ":", "->", "\n", ","}
    for name in TASK_NAMES:
        for x, y in get_task(name).pairs:
            words.update(x.replace(",", " , ").split())
            words.update(y.split())
    vocab = ["<pad>", "<bos>", "<eos>", "<unk>"] + sorted(words) + sorted(" " + w for w in words)
    if len(vocab) > vocab_size:
        raise ValueError(f"word tokenizer needs {len(vocab)} ids, the config has {vocab_size}")
    tok = Tokenizer(models.WordLevel({t: i for i, t in enumerate(vocab)}, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.Split(Regex(r" ?[^\s:,\->]+| ?->| ?[:,]|\n"), "isolated")
    from tokenizers.processors import TemplateProcessing

    tok.post_processor = TemplateProcessing(single="<bos> $A", special_tokens=[("<bos>", 1)])
    return PreTrainedTokenizerFast(tokenizer_object=tok, pad_token="<pad>", bos_token="<bos>", eos_token="<eos>",
                                   unk_token="<unk>", padding_side="left")


LLAMA_7B = dict(hidden_size=4096, intermediate_size=11008, num_hidden_layers=32, num_attention_heads=32,
                num_key_value_heads=32, vocab_size=32000, max_position_embeddings=4096)


def random_llama_7b(device: str, dtype=torch.bfloat16) -> Model:
    """Llama-7B-shaped model with random weights, built directly on the device."""
    from transformers import AutoModelForCausalLM, LlamaConfig

    config = LlamaConfig(**LLAMA_7B, bos_token_id=1, eos_token_id=2, pad_token_id=0)
    torch.manual_seed(0)
    with torch.device(device):
        hf = AutoModelForCausalLM.from_config(config, dtype=dtype).eval()
    return Model(name="random-llama-7b", hf=hf, tokenizer=word_tokenizer(config.vocab_size),
                 info={"device": device, "dtype": str(dtype)})


def bench_random_7b(device: str = "cuda") -> dict:
    """The full paper protocol (18 tasks, 50 dev + 50 test episodes, every layer) on a random 7B Llama,
    with a breakdown by stage (the same calls `experiments.run_tasks` makes)."""
    from .experiments import encode_queries, sample_split

    start = time.perf_counter()
    model = random_llama_7b(device)
    _sync(model)
    build = time.perf_counter() - start
    p, fmt = PAPER, DEFAULT_FORMAT

    def protocol(n_dev: int, n_test: int) -> dict:
        dev = [ep for t in TASK_NAMES for ep in sample_split(model, t, "dev", n_dev, p, fmt)[1]]
        test = [ep for t in TASK_NAMES for ep in sample_split(model, t, "test", n_test, p, fmt)[1]]
        seconds = {}
        (theta, _), seconds["dev theta (all layers)"] = timed(model, engine.episode_states, model, dev, fmt, 32,
                                                              False)
        queries = encode_queries(model, dev, fmt)
        _, seconds["dev sweep (all layers)"] = timed(model, engine.layer_sweep, model, queries, theta)
        (theta, _), seconds["test theta + ICL"] = timed(model, engine.episode_states, model, test, fmt)
        queries = encode_queries(model, test, fmt)
        _, seconds["test baseline"] = timed(model, engine.next_tokens, model, queries)
        _, seconds["test TV at one layer"] = timed(model, engine.layer_sweep, model, queries, theta, [16])
        return seconds

    protocol(4, 4)  # warm-up: kernels, allocator
    if device.startswith("cuda"):
        torch.cuda.reset_peak_memory_stats()
    (stages, total) = timed(model, protocol, p.n_dev, p.n_test)
    info = {"model": model.name, "layers": model.n_layers, "tasks": len(TASK_NAMES), "build_s": round(build, 2),
            "protocol_s": round(total, 2), "stages_s": {k: round(v, 2) for k, v in stages.items()},
            "device": torch.cuda.get_device_name() if device.startswith("cuda") else device}
    if device.startswith("cuda"):
        info["peak_gpu_gb"] = round(torch.cuda.max_memory_allocated() / 2**30, 1)
    return info


def main(args) -> None:
    from .models import load_model

    pd.set_option("display.width", 140)
    if args.random_7b:
        print(json.dumps(bench_random_7b(args.device or "cuda"), indent=1))
        return
    if args.compare_dtypes:
        print(f"== reproduce per dtype (paper protocol, child processes) on {cpu_flags()}")
        times, table = bench_dtypes(args.model, args.compare_dtypes)
        print(times.to_string(index=False, float_format="%.3f"))
        print("\nmean accuracy by category")
        print(table.to_string(float_format="%.3f"))
        return
    model = load_model(args.model, device=args.device, dtype=args.dtype)
    print(f"model {model.name} ({model.info['dtype']} on {model.info['device']}), {torch.get_num_threads()} threads")
    print(f"\n== layer sweep ({model.n_layers} layers x {PAPER.n_dev} dev queries, theta over "
          f"{PAPER.n_dummies} dummies) on {', '.join(args.tasks)}")
    print(bench_sweeps(model, args.tasks).to_string(index=False, float_format="%.2f"))
    print("\n== nnsight vs plain PyTorch hooks (same batches, best of 3)")
    print(bench_nnsight_overhead(model).to_string(index=False, float_format="%.3f"))
    if not args.skip_reproduce:
        del model
        print("\n== end-to-end reproduce (paper protocol, child process)")
        print(pd.DataFrame([bench_reproduce(args.model, dtype=args.dtype)[0]]).to_string(index=False, float_format="%.2f"))
