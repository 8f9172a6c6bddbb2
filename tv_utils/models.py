"""Loading models: an embedded offline one (`embedded`), or any Hugging Face id / local path.

`load_model()` returns a `Model`: the transformers model, its tokenizer, an nnsight wrapper, and uniform
access to the decoder layers, final norm and unembedding across Llama, Qwen2, Gemma3, GPT-2, GPT-J
and GPT-NeoX (module paths differ by family; `LAYER_PATHS` lists them).
"""

from __future__ import annotations

import inspect
import os
from dataclasses import dataclass, field
from functools import cached_property
from operator import attrgetter
from pathlib import Path

import torch

from . import prompts
from .embedded import DEFAULT_MODEL, EMBEDDED, local_copy

__all__ = ["DTYPES", "LAYER_PATHS", "Model", "NonFiniteError", "available_devices", "check_finite", "from_config",
           "load_model", "load_remote", "nnsight_wrapper_module", "resolve_dtype"]

# (decoder layers, final norm) relative to the top-level *ForCausalLM module, per family.
LAYER_PATHS = (
    ("model.layers", "model.norm"),  # Llama, Qwen2, Gemma3, Mistral, SmolLM
    ("transformer.h", "transformer.ln_f"),  # GPT-2, GPT-J
    ("gpt_neox.layers", "gpt_neox.final_layer_norm"),  # GPT-NeoX / Pythia
)


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
    if device.startswith("cuda") and torch.cuda.is_bf16_supported(including_emulation=False):  # T4, V100: emulated
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
            raise ValueError(f"layer {layer!r} is out of range for {self.name}: "
                             f"valid layers are 0..{self.n_layers - 1}")
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
               prepend_bos: bool = True, device_map: str | dict | None = None,
               offload_folder: str | None = None) -> Model:
    """Load an embedded model by key (default `gemma3-270m`), a local path, or a Hugging Face id.

    device_map ("auto", or accelerate's {module name: device} dict) shards a model too large for one device
    across the GPUs, the CPU and (with offload_folder) the disk; the engine and the traces follow it."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    name = name_or_path or DEFAULT_MODEL
    device = device or ("cuda" if torch.cuda.is_available() else "cpu")
    dtype = resolve_dtype(dtype, device)
    if name in EMBEDDED:
        source = local_copy(name)
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
                 info={"source": str(source), "device": str(device_map or device),
                       "dtype": str(dtype).replace("torch.", "")})


def load_remote(repo_id: str) -> Model:
    """A model that NDIF hosts, for `interventions` traces with remote=True (needs network and an NDIF
    API key: `nnsight.CONFIG.set_default_api_key(...)`). Weights stay on the server (meta tensors here),
    so only the nnsight functions in `interventions` work with it, not the local `engine`."""
    from nnsight import TransformersModel

    wrapper = TransformersModel(repo_id)
    model = Model(name=repo_id, hf=nnsight_wrapper_module(wrapper), tokenizer=wrapper.tokenizer,
                  prepend_ids=_bos_stand_in(wrapper.tokenizer), info={"source": repo_id, "device": "remote"})
    model.__dict__["nn"] = wrapper  # `Model.nn` is a cached_property: this fills its slot
    return model


def nnsight_wrapper_module(wrapper):
    """The torch module an nnsight wrapper was built around. nnsight 0.8 has no public accessor for it, so
    this is the one place that reads its private `_module` (tests/test_mechanics.py fails if that changes)."""
    module = getattr(wrapper, "_module", None)
    if not isinstance(module, torch.nn.Module):
        raise RuntimeError("this nnsight version keeps no `_module` on its model wrapper: update "
                           "models.nnsight_wrapper_module")
    return module


def from_config(config, tokenizer, name: str = "random", seed: int = 0, dtype: torch.dtype = torch.float32) -> Model:
    """A randomly initialised model from a transformers config (tests, GPU throughput runs)."""
    from transformers import AutoModelForCausalLM

    torch.manual_seed(seed)
    hf = AutoModelForCausalLM.from_config(config).to(dtype).eval()
    return Model(name=name, hf=hf, tokenizer=tokenizer, prepend_ids=_bos_stand_in(tokenizer))


def available_devices() -> list[str]:
    """Devices a model can run on here: cpu, each CUDA GPU (cuda, cuda:0, ...) and mps."""
    devices = ["cpu"]
    if torch.cuda.is_available():
        devices += ["cuda", *(f"cuda:{i}" for i in range(torch.cuda.device_count()))]
    if torch.backends.mps.is_available():
        devices.append("mps")
    return devices
