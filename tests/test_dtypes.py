"""dtype rules: float32 on every CPU (no timing probe), bf16 only where asked or on a bf16 GPU, and NaN/inf
(float16 overflow) as a clear error instead of a table of zero accuracies."""

import pytest
import torch

from tv_utils import engine
from tv_utils import interventions as iv
from tv_utils.experiments import evaluate_task
from tv_utils.protocol import Protocol
from tv_utils.models import NonFiniteError, load_model, resolve_dtype

pytestmark = pytest.mark.tiny


def test_default_dtype_is_fixed_per_device(monkeypatch):
    monkeypatch.delenv("TV_UTILS_DTYPE", raising=False)
    assert [resolve_dtype(None, "cpu") for _ in range(3)] == [torch.float32] * 3
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda *a, **k: True)
    assert resolve_dtype(None, "cuda") == torch.bfloat16
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda including_emulation=True: including_emulation)
    assert resolve_dtype(None, "cuda:0") == torch.float32  # a T4 or V100: bf16 only emulated (slow), and not float16
    assert resolve_dtype("float16", "cuda") == torch.float16  # only on request
    monkeypatch.setenv("TV_UTILS_DTYPE", "bfloat16")
    assert resolve_dtype(None, "cpu") == torch.bfloat16 and resolve_dtype("float32", "cpu") == torch.float32


def test_unknown_dtype_names_the_choices():
    with pytest.raises(ValueError, match="unknown dtype 'float33'; valid dtypes: float32, bfloat16, float16"):
        resolve_dtype("float33", "cpu")


def test_nan_is_an_error_not_zero_accuracy(new_tiny_llama):
    broken = new_tiny_llama
    with torch.no_grad():
        broken.layers[1].mlp.down_proj.weight[0, 0] = float("nan")
    seqs = broken.encode(["example:a-> b\nexample:c->", "example:d->"])
    for run in (lambda: iv.capture(broken, seqs), lambda: iv.patched_logits(broken, seqs, None, None),
                lambda: engine.next_tokens(broken, seqs)):
        with pytest.raises(NonFiniteError, match="tiny-llama in float32 produced NaN/inf"):
            run()


def test_three_loads_of_the_default_model_are_float32(gemma, monkeypatch):
    monkeypatch.delenv("TV_UTILS_DTYPE", raising=False)
    dtypes = [gemma.info["dtype"]] + [load_model(device="cpu").info["dtype"] for _ in range(2)]
    assert dtypes == ["float32"] * 3


@pytest.mark.model
def test_float16_gives_a_clear_error_or_real_results():
    """Gemma 3 overflows float16: the protocol must stop with an error naming the dtype and the fix,
    or (on hardware where it happens to stay finite) give real, non-zero accuracy."""
    model = load_model(device="cpu", dtype="float16")
    try:
        summary, _ = evaluate_task(model, "country_capital", Protocol(n_dev=4, n_test=6, k=3))
    except NonFiniteError as e:
        assert "float16" in str(e) and "--dtype float32" in str(e)
    else:
        assert summary["icl"] > 0, summary


@pytest.mark.model
def test_public_functions_run_in_bfloat16():
    """The same calls the notebooks make, on the real model in bfloat16 (slow on AVX2-only CPUs: tiny counts)."""
    model = load_model(device="cpu", dtype="bfloat16")
    summary, per_layer = evaluate_task(model, "country_capital", Protocol(n_dev=4, n_test=6, k=3))
    assert summary["icl"] > 0 and len(per_layer) == model.n_layers
    seqs = model.encode(["example:France-> Paris\nexample:Japan->", "example:Spain->"])
    states = iv.capture(model, seqs)
    assert states.dtype == torch.bfloat16
    patched = iv.patched_logits(model, seqs[1:], states[0, 9], 9)
    assert model.decode_token(patched.argmax(-1)[0]).strip() == "Madrid"  # the task from θ, the query's own answer


@pytest.mark.model
def test_cli_reports_float16_overflow_in_one_line(tmp_path, capsys):
    """The CLI stops with the NonFiniteError's message as one line (as for bad input), not a traceback."""
    from tv_utils.__main__ import main

    with pytest.raises(SystemExit) as stop:
        main(["reproduce", "--device", "cpu", "--dtype", "float16", "--tasks", "country_capital", "--k", "3",
              "--n-dev", "2", "--n-test", "2", "--no-figures", "--out", str(tmp_path)])
    err = capsys.readouterr().err
    last_line = err.strip().splitlines()[-1].split("\r")[-1].strip()
    assert stop.value.code == 1 and "Traceback" not in err
    assert last_line.startswith("error: gemma3-270m in float16 produced NaN/inf hidden states"), last_line
    assert "--dtype float32" in last_line
