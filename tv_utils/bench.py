"""`python -m tv_utils bench`: the layer sweep four ways, nnsight vs plain hooks, and end-to-end
reproduce, timed side by side in one process on the same inputs, with ratios.

Sweep methods (theta for every dev episode, then every layer x every dev query):
- straightforward: nnsight as a first version would use it: theta from each dummy prompt in full, and for
  each layer the whole query prompt again, with the model's default head (logits for every position);
- kv-cache (the paper's code): theta from full dummy prompts; the query minus its last token cached once,
  then for each layer only the last token is re-run (batch = queries) and read through the head;
- engine, all layers (before): the engine's sweep before it skipped layers: the query prefix cache
  repeated once per layer, and the last token of every (query, layer) row run through all layers in one
  batch, overwritten at L by the patch hook;
- engine: `engine.episode_states` + `engine.layer_sweep` (shared demo prefix; per layer L, only the layers
  after L run on the last token).
All must give the same answers; the table says so.
"""

from __future__ import annotations

import contextlib
import copy
import functools
import hashlib
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pandas as pd
import torch

from . import engine
from . import interventions as iv
from .batches import ROWS, chunks, layer_hidden, pad_left
from .head import greedy
from .hooks import hooked
from .experiments import summarize
from .protocol import PAPER, Protocol
from .models import Model
from .prompts import DEFAULT_FORMAT, usable_task
from .tasks import TASK_NAMES, get_task, sample_episodes

__all__ = ["bench_before_after", "bench_dtypes", "bench_nnsight_overhead", "bench_random_7b", "bench_reproduce",
           "bench_sharded", "bench_sweeps", "child_command", "compute_floor", "cpu_flags", "LLAMA_13B", "LLAMA_7B",
           "main", "matmul_rates", "processor", "protocol_stages", "random_llama_7b", "sweep_engine",
           "sweep_engine_all_layers", "sweep_kv_cache", "sweep_straightforward", "SWEEPS", "timed", "word_tokenizer"]


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


@torch.no_grad()
def sweep_engine_all_layers(model: Model, episodes, dummies, queries, n_dummies: int) -> torch.Tensor:
    theta, _ = engine.episode_states(model, episodes, icl=False)
    k = model.n_layers
    cols = []
    for part in chunks(len(queries), max(1, engine.device_rows(model, engine.SWEEP_ROWS) // k)):
        chunk = queries[part]
        prefix_mask, cache = engine.cached_prefix(model, [q[:-1] for q in chunk])
        cache.batch_repeat_interleave(k)
        batch = engine.suffix_batch(model, prefix_mask, [[q[-1]] for q in chunk for _ in range(k)], k)
        rows = torch.arange(len(chunk), device=model.device) * k
        final, _, _ = engine.forward(model, batch, cache=cache,
                                     patch={layer: (rows + layer, theta[part][:, layer]) for layer in range(k)})
        cols.append(engine.predict(model, final).view(len(chunk), k))
    return torch.cat(cols)


def sweep_engine(model: Model, episodes, dummies, queries, n_dummies: int) -> torch.Tensor:
    theta, _ = engine.episode_states(model, episodes, icl=False)
    return engine.layer_sweep(model, queries, theta)


SWEEPS = {"straightforward (nnsight)": sweep_straightforward, "kv-cache (paper's code)": sweep_kv_cache,
          "engine, all layers (before)": sweep_engine_all_layers, "engine": sweep_engine}


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


def _hook_capture(model: Model, seqs, batch_size: int = ROWS) -> torch.Tensor:
    """iv.capture's work with plain forward hooks instead of nnsight."""
    out = []
    for part in chunks(len(seqs), batch_size):
        states = []
        save = lambda m, a, o: states.append(layer_hidden(o)[:, -1])  # noqa: E731
        with hooked([(layer, save) for layer in model.layers]), torch.no_grad():
            model.hf(**pad_left(model, seqs[part]), logits_to_keep=1)
        out.append(torch.stack(states, dim=1))
    return torch.cat(out)


def _hook_patch(model: Model, seqs, theta, layer: int, batch_size: int = ROWS) -> torch.Tensor:
    """iv.patched_logits's work with a plain forward hook instead of nnsight."""
    out = []
    for part in chunks(len(seqs), batch_size):
        def write(m, a, o, values=theta[part]):
            layer_hidden(o)[:, -1] = values

        with hooked([(model.layers[layer], write)]), torch.no_grad():
            out.append(model.hf(**pad_left(model, seqs[part]), logits_to_keep=1).logits[:, -1].float())
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


RESULT_FILES = {"reproduce": ["reproduce_*_results.csv", "reproduce_*_per_layer.csv"],  # what a child's digest covers
                "function-vectors": ["function_vectors_*.csv", "function_vectors_*.json"]}


def bench_reproduce(model_name: str | None, tasks=TASK_NAMES, dtype: str | None = None,
                    device: str | None = None, code: Path | None = None,
                    command: str = "reproduce") -> tuple[dict, pd.DataFrame | None]:
    """`python -m tv_utils reproduce` (or `command`: "function-vectors") as a child process on `device`: its
    reported time, its peak RSS (and peak GPU memory on a GPU), a digest of its result files (RESULT_FILES), and,
    for reproduce, its results. code: a folder holding the tv_utils to run (a checkout of another commit), run
    from there on PYTHONPATH; default: whichever tv_utils the child imports. A child whose code predates
    `--run-record` for `command` gives its wall time only."""
    run_from = {"cwd": code, "env": {**os.environ, "PYTHONPATH": str(code)}} if code else {}
    with tempfile.TemporaryDirectory() as out:
        record = Path(out) / "run.json"
        cmd = child_command(command, out, model_name, tasks, dtype, device)
        if _records(command, code):
            cmd += ["--run-record", str(record)]
        start = time.perf_counter()
        subprocess.run(cmd, capture_output=True, text=True, check=True, **run_from)
        wall = time.perf_counter() - start
        files = sorted(f for pattern in RESULT_FILES[command] for f in Path(out).glob(pattern))
        tables = hashlib.sha256(b"".join(f.read_bytes() for f in files)).hexdigest()
        results = next((pd.read_csv(f) for f in files if f.name.endswith("_results.csv")), None)  # reproduce's
        child = json.loads(record.read_text()) if record.exists() else {}  # its own time (load excluded), memory
    row = {"command": command, "dtype": dtype or "default", "tasks": len(tasks),
           "seconds_excluding_load": child.get("seconds_excluding_load"), "wall_with_load": wall,
           "peak_rss_gb": child.get("peak_rss_gb"), "tables_sha256": tables[:12]}
    if "peak_gpu_gb" in child:
        row["peak_gpu_gb"] = child["peak_gpu_gb"]
    return row, results


def _records(command: str, code: Path | None) -> bool:
    """Whether the tv_utils in `code` (default: this one) has `command --run-record` (asked of its --help)."""
    if command == "reproduce" or code is None:
        return True  # reproduce has had it since before `bench --before` was accepted (`_code_folder` checks)
    shown = subprocess.run([sys.executable, "-m", "tv_utils", command, "--help"], capture_output=True, text=True,
                           check=True, cwd=code, env={**os.environ, "PYTHONPATH": str(code)}).stdout
    return "--run-record" in shown


def child_command(command: str, out: str, model_name: str | None, tasks, dtype: str | None,
                  device: str | None) -> list[str]:
    """The child's command line: `command` on all `tasks` without figures, on the bench's model, dtype and device."""
    cmd = [sys.executable, "-m", "tv_utils", command, "--out", out, "--no-figures", "--tasks", *tasks]
    for flag, value in (("--model", model_name), ("--dtype", dtype), ("--device", device)):
        cmd += [flag, value] if value else []
    return cmd


def bench_before_after(model_name: str | None, before: Path, tasks=TASK_NAMES, dtype: str | None = None,
                       device: str | None = None, commands=("reproduce",)) -> pd.DataFrame:
    """Each of `commands` (reproduce, function-vectors) with the tv_utils in `before` (e.g. a git worktree of main)
    and with this code, one child process each, side by side: times, peak RSS, the digest of the result files
    (equal digests: byte for byte the same tables), and the speed-up (on the time without the model's load where
    both report it, else on the wall time)."""
    here = Path(__file__).resolve().parents[1]
    rows = []
    for command in commands:
        pair = [{"code": name, **bench_reproduce(model_name, tasks, dtype, device, code, command)[0]}
                for name, code in (("before", Path(before).resolve()), ("after", here))]
        key = "seconds_excluding_load" if all(r["seconds_excluding_load"] for r in pair) else "wall_with_load"
        for r in pair:
            r["x_faster_than_before"] = pair[0][key] / r[key]
        rows += pair
    return pd.DataFrame(rows)


def bench_dtypes(model_name: str | None, dtypes=("float32", "bfloat16"), tasks=TASK_NAMES,
                 device: str | None = None) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Full reproduce once per dtype, side by side: (time table, mean accuracy per category and dtype).

    The time table also counts, against the first dtype, the tasks whose best layer moved and the largest
    per-task change in each accuracy."""
    times, accuracy, first = [], [], None
    for dtype in dtypes:
        row, results = bench_reproduce(model_name, tasks, dtype, device)
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


def processor(device: str | None) -> str:
    """What runs the model: the GPU's name for a CUDA device (the default where one exists), else the CPU."""
    if (device or ("cuda" if torch.cuda.is_available() else "cpu")).startswith("cuda"):
        return torch.cuda.get_device_name(torch.device(device or "cuda"))
    return cpu_flags()


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


def protocol_stages(model: Model, protocol: Protocol = PAPER, tv_layer: int | None = None,
                    count_flops: bool = False) -> pd.DataFrame:
    """The paper protocol on all tasks through the calls `experiments.run_tasks` makes, timed stage by stage
    (TV at `tv_layer` for every task, default the middle layer). count_flops adds each stage's matrix-product
    FLOPs counted by torch (`FlopCounterMode`): in the decoder stack and in the rest (the unembedding)."""
    from torch.utils.flop_counter import FlopCounterMode

    from .experiments import encode_queries, sample_split

    p, fmt = protocol, DEFAULT_FORMAT
    tv_layer = model.n_layers // 2 if tv_layer is None else tv_layer
    dev = [ep for t in TASK_NAMES for ep in sample_split(model, t, "dev", p.n_dev, p, fmt)[1]]
    test = [ep for t in TASK_NAMES for ep in sample_split(model, t, "test", p.n_test, p, fmt)[1]]
    dev_queries, test_queries = encode_queries(model, dev, fmt), encode_queries(model, test, fmt)
    rows = []

    def stage(name: str, fn, *args):
        counter = FlopCounterMode(display=False) if count_flops else contextlib.nullcontext()
        with counter:
            out, seconds = timed(model, fn, *args)
        rows.append({"stage": name, "seconds": seconds})
        if count_flops:
            stack = sum(counter.get_flop_counts().get(type(model.base).__name__, {}).values())
            rows[-1].update(tflop_layers=stack / 1e12, tflop_head=(counter.get_total_flops() - stack) / 1e12)
        return out

    by_length = functools.partial(engine.episode_states, by_length=True)  # as experiments.run_with_theta runs it
    theta, _ = stage("dev theta (all layers)", by_length, model, dev, fmt, ROWS, False)
    stage("dev sweep (all layers)", engine.layer_sweep, model, dev_queries, theta)
    theta, _ = stage("test theta + ICL", by_length, model, test, fmt)
    unpatched = engine.Added(torch.zeros_like(theta[0, 0]))  # the baseline shares the TV's query prefixes
    stage(f"test TV at layer {tv_layer} + baseline", engine.layer_sweeps, model, test_queries, [theta, unpatched],
          [[tv_layer], [model.n_layers - 1]])
    return pd.DataFrame(rows)


@torch.no_grad()
def matmul_rates(model: Model, repeats: int = 5) -> dict[str, float]:
    """FLOP/s of this machine's matrix products on the model's own weights, best of `repeats`: the linear maps
    of a decoder layer on engine.SWEEP_ROWS rows, and the unembedding's argmax on engine.HEAD_ROWS rows, as the
    protocol runs it (`head.greedy`: bf16-screened where that pays) and in float32 products only."""
    def rate(module, rows: int, run=None) -> float:
        x = torch.randn(rows, module.in_features, dtype=model.dtype, device=model.device)
        run = run or module
        run(x)  # warm-up
        return 2 * rows * module.in_features * module.out_features / min(timed(model, run, x)[1]
                                                                          for _ in range(repeats))

    linears = [m for m in model.layers[0].modules() if isinstance(m, torch.nn.Linear)]
    flops = [2 * m.in_features * m.out_features for m in linears]
    seconds = [f / rate(m, engine.SWEEP_ROWS) for f, m in zip(flops, linears)]
    head = rate(model.unembed, engine.HEAD_ROWS, lambda x: greedy(model, x))
    exact = rate(model.unembed, engine.HEAD_ROWS, lambda x: greedy(model, x, screen=False))
    return {"layers": sum(flops) / sum(seconds), "head": head, "head_float32": exact}


def compute_floor(model: Model, protocol: Protocol = PAPER) -> tuple[pd.DataFrame, dict]:
    """Each protocol stage's measured seconds against its compute floor: its FLOPs over the matrix-product
    rates measured here (`matmul_rates`). Attention products are not counted (torch counts no FLOPs for
    CPU attention); they are small next to the linear maps at these prompt lengths."""
    rates = matmul_rates(model)
    table = protocol_stages(model, protocol, count_flops=True)
    table.loc[len(table)] = ["total", *table[["seconds", "tflop_layers", "tflop_head"]].sum()]
    table["floor_s"] = table["tflop_layers"] * 1e12 / rates["layers"] + table["tflop_head"] * 1e12 / rates["head"]
    table["x_over_floor"] = table["seconds"] / table["floor_s"]
    return table, rates


def bench_random_7b(device: str = "cuda") -> dict:
    """The full paper protocol (18 tasks, 50 dev + 50 test episodes, every layer) on a random 7B Llama,
    with a breakdown by stage (the same calls `experiments.run_tasks` makes)."""
    start = time.perf_counter()
    model = random_llama_7b(device)
    _sync(model)
    build = time.perf_counter() - start
    protocol_stages(model, Protocol(n_dev=4, n_test=4), tv_layer=model.n_layers // 2)  # warm-up: kernels, allocator
    if device.startswith("cuda"):
        torch.cuda.reset_peak_memory_stats()
    stages, total = timed(model, protocol_stages, model, PAPER, model.n_layers // 2)
    info = {"model": model.name, "layers": model.n_layers, "tasks": len(TASK_NAMES), "build_s": round(build, 2),
            "protocol_s": round(total, 2), "stages_s": dict(zip(stages["stage"], stages["seconds"].round(2))),
            "device": torch.cuda.get_device_name() if device.startswith("cuda") else device}
    if device.startswith("cuda"):
        info["peak_gpu_gb"] = round(torch.cuda.max_memory_allocated() / 2**30, 1)
    return info


LLAMA_13B = dict(hidden_size=5120, intermediate_size=13824, num_hidden_layers=40, num_attention_heads=40,
                 num_key_value_heads=40, vocab_size=32000, max_position_embeddings=4096)


def bench_sharded(device: str = "cuda", folder: str | None = None, tasks=("en_fr", "antonyms", "country_capital"),
                  n: int = 20) -> dict:
    """A random Llama-13B shape saved once, then loaded whole on `device` and split by accelerate with its
    second half of decoder layers in CPU memory (run on `device`, weights streamed in): the protocol on a few
    tasks must give the same tables both ways; times and peak GPU memory side by side."""
    from transformers import AutoModelForCausalLM, LlamaConfig

    from .experiments import run_tasks
    from .models import load_model

    config = LlamaConfig(**LLAMA_13B, bos_token_id=1, eos_token_id=2, pad_token_id=0)
    folder = folder or tempfile.mkdtemp(prefix="random-llama-13b-")
    torch.manual_seed(0)
    with torch.device(device):
        AutoModelForCausalLM.from_config(config, dtype=torch.bfloat16).save_pretrained(folder)
    word_tokenizer(config.vocab_size).save_pretrained(folder)
    half = config.num_hidden_layers // 2
    split = {"model.embed_tokens": device, "model.rotary_emb": device, "model.norm": device, "lm_head": device,
             **{f"model.layers.{i}": device if i < half else "cpu" for i in range(config.num_hidden_layers)}}
    protocol, rows, tables = Protocol(n_dev=n, n_test=n), [], []
    for placement, kwargs in (("whole on " + device, {"device": device}), (f"layers {half}+ in CPU memory",
                                                                             {"device_map": split})):
        start = time.perf_counter()
        model = load_model(folder, dtype="bfloat16", **kwargs)
        load = time.perf_counter() - start
        if device.startswith("cuda"):
            torch.cuda.reset_peak_memory_stats()
        (results, per_layer, *_), seconds = timed(model, run_tasks, model, list(tasks), protocol, DEFAULT_FORMAT,
                                              None, False)
        tables.append((results.drop(columns="model"), per_layer.drop(columns="model")))
        rows.append({"placement": placement, "load_s": round(load, 1), "protocol_s": round(seconds, 1),
                     "peak_gpu_gb": round(torch.cuda.max_memory_allocated() / 2**30, 1) if device.startswith("cuda")
                     else None})
        del model
    same = all(a.equals(b) for a, b in zip(*tables))
    return {"model": "random Llama-13B shape (bf16)", "tasks": list(tasks), "episodes": n, "same_tables": same,
            "runs": rows, "device": processor(device)}


def main(args) -> None:
    from .models import load_model

    pd.set_option("display.width", 140)
    if args.random_7b:
        print(json.dumps(bench_random_7b(args.device or "cuda"), indent=1))
        return
    if args.sharded_13b:
        print(json.dumps(bench_sharded(args.device or "cuda"), indent=1))
        return
    if args.compare_dtypes:
        print(f"== reproduce per dtype (paper protocol, child processes) on {processor(args.device)}")
        times, table = bench_dtypes(args.model, args.compare_dtypes, device=args.device)
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
    if args.floor:
        print("\n== compute floor per stage (paper protocol in this process; FLOPs / matrix-product rate here)")
        table, rates = compute_floor(model)
        print(f"rates: {rates['layers'] / 1e9:.0f} GFLOP/s (decoder layers, {engine.SWEEP_ROWS} rows), "
              f"{rates['head'] / 1e9:.0f} GFLOP/s (unembedding's argmax, {engine.HEAD_ROWS} rows; float32 products "
              f"only: {rates['head_float32'] / 1e9:.0f})")
        print(table.to_string(index=False, float_format="%.2f"))
    if not args.skip_reproduce:
        del model
        print("\n== end-to-end reproduce (paper protocol, child process)")
        commands = ("reproduce", "function-vectors") if args.function_vectors else ("reproduce",)
        if args.before:
            print(bench_before_after(args.model, args.before, dtype=args.dtype, device=args.device, commands=commands)
                  .to_string(index=False, float_format="%.2f"))
        else:
            rows = [bench_reproduce(args.model, dtype=args.dtype, device=args.device, command=c)[0] for c in commands]
            print(pd.DataFrame(rows).to_string(index=False, float_format="%.2f"))
