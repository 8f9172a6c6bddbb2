"""Writing results atomically (tidy CSV/JSON, figures) so an interrupted run never leaves half a file."""

from __future__ import annotations

import gzip
import json
import os
import tempfile
from pathlib import Path

__all__ = ["FIGURES", "INSTALLED", "precomputed", "results_folder", "results_stem", "save_figure", "save_json",
           "save_table", "SHIPPED", "stem_of", "stored_file", "suffixed", "versions", "write_atomic"]


_PACKAGE = Path(__file__).resolve().parent
SHIPPED = _PACKAGE / "results"  # figures/' tables as a built wheel holds them (pyproject.toml: tv_utils.results)
INSTALLED = SHIPPED.is_dir()  # a non-editable install; a source checkout (editable or not) has no results/
# The committed reference results, which the course reads. Read-only: no run writes here unless named with --out
# (`make reference` does, on purpose).
FIGURES = SHIPPED if INSTALLED else _PACKAGE.parent / "figures"


def results_folder(folder: str | Path | None = None) -> Path:
    """Where a run writes its results: `folder` if given, else $TV_UTILS_RESULTS, else ./results of the current
    directory (ignored by git in a checkout). Never the committed reference, unless it is named explicitly."""
    return Path(folder or os.environ.get("TV_UTILS_RESULTS") or "results")


def results_stem(kind: str, model_name: str, folder: str | Path | None = None) -> Path:
    """The one naming rule for result files: <folder>/<kind>_<model name with / as _>, e.g.
    figures/reproduce_gemma3-270m (add the part and suffix: `_results.csv`, `_theta.safetensors`)."""
    return results_folder(folder) / f"{kind}_{model_name.replace('/', '_')}"


def suffixed(stem: str | Path, suffix: str) -> Path:
    """`stem` + `suffix`, keeping dots in model names ("Qwen2.5-0.5B" + ".csv"; `Path.with_suffix` would cut
    at ".5-0"); a path that already ends in `suffix` is returned as it is."""
    stem = Path(stem)
    return stem if stem.name.endswith(suffix) else stem.with_name(stem.name + suffix)


def stem_of(path: str | Path, suffix: str) -> Path:
    """`path` without `suffix` if it ends in it (the inverse of `suffixed`)."""
    path = Path(path)
    return path.with_name(path.name[:-len(suffix)]) if path.name.endswith(suffix) else path


def stored_file(name: str, folder: str | Path | None = None) -> Path | None:
    """The file `name` from your own results when you point at them (`folder`, else $TV_UTILS_RESULTS), else
    from the committed reference (FIGURES); None if none has it. Without either, only the reference is read,
    so a quick run of yours never changes what the notebooks show."""
    own = folder or os.environ.get("TV_UTILS_RESULTS")
    for path in ([Path(own) / name] if own else []) + [FIGURES / name]:
        if path.exists():
            return path
    return None


def precomputed(name: str, folder: str | Path | None = None, text=()):
    """A result table, e.g. precomputed("reproduce_gemma3-270m_per_layer"), from your results if you point at
    them, else the committed reference (`stored_file`); None if neither has it. Only empty cells are missing
    values: tokens such as "None" or "NA" stay text. Columns named in `text` are read as written (" 7" stays
    text, not the number 7)."""
    import pandas as pd

    path = stored_file(f"{name}.csv", folder) or stored_file(f"{name}.csv.gz", folder)
    return None if path is None else pd.read_csv(path, keep_default_na=False, na_values=[""],
                                                 dtype={column: str for column in text})


def write_atomic(path: str | Path, data: str | bytes) -> Path:
    """Write to a temporary file beside `path`, then rename it into place."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data.encode() if isinstance(data, str) else data)
        os.chmod(tmp, 0o666 & ~_umask())  # mkstemp makes 0600; give the file ordinary permissions
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def save_table(df, path: str | Path) -> Path:
    """A DataFrame as CSV (floats rounded to 4 places, so reruns diff cleanly); a path ending in .gz is
    gzipped with no time stamp, so the same table gives the same bytes."""
    text = df.to_csv(index=False, float_format="%.4f")
    return write_atomic(path, gzip.compress(text.encode(), mtime=0) if str(path).endswith(".gz") else text)


def versions(packages=("torch", "transformers", "nnsight")) -> dict[str, str]:
    """Versions of the packages that decide the numbers, recorded with results (no machine paths: the same
    run gives the same bytes on every machine)."""
    from importlib.metadata import version

    return {name: version(name).split("+")[0] for name in packages}  # torch 2.13.0+cpu: the release


def save_json(obj, path: str | Path) -> Path:
    return write_atomic(path, json.dumps(obj, indent=1, default=float) + "\n")


def save_figure(fig, stem: str | Path, png: bool = True, width: int = 1000) -> list[Path]:
    """A plotly figure as interactive HTML (plotly.js from CDN, fills the page) and, when a browser is
    available, PNG `width` px wide at the figure's own height (the figures set no width of their own)."""
    stem = Path(stem)
    html = fig.to_html(include_plotlyjs="cdn", full_html=True, div_id=stem.name)  # no random id: same bytes
    written = [write_atomic(suffixed(stem, ".html"), html)]
    if png:
        image = fig.to_image(format="png", width=width, height=fig.layout.height, scale=2)
        written.append(write_atomic(suffixed(stem, ".png"), image))
    return written
