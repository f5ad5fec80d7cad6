"""Checks a `sympathy export --to safetensors-hf` folder from the PyTorch side: reads it
the way Hugging Face's GPT2LMHeadModel does and compares its logits with sympathy's.

    python scripts/check_hf_export.py EXPORT_DIR EXPECTED.safetensors [--tol 1e-5]

EXPECTED holds `x` (B, T) token ids and `logits` (B, T, V) computed by sympathy; the
Rust test tests/parity.rs writes it and runs this script. Exit status 1 when the
largest logit difference, relative to the largest logit, exceeds --tol.

Two readers, because `transformers` is not part of the project's venv:
- Always: `hf_gpt2_logits` below, a plain-torch GPT-2 that takes every name, shape and
  option from the export exactly as transformers' modeling_gpt2.py does: Conv1D
  computes `x @ weight + bias` with weight stored (in, out); `activation_function` is
  looked up ("gelu" = exact erf GELU, "gelu_new" = tanh approximation);
  `layer_norm_epsilon`, `n_head`, `n_positions`, `n_inner` come from config.json; the
  head is `lm_head.weight`; the file must carry the `{"format": "pt"}` metadata that
  `from_pretrained` requires. A wrong transpose, name or option fails here.
- When `import transformers` works (e.g. `pip install transformers`): also
  `GPT2LMHeadModel.from_pretrained(EXPORT_DIR)` itself.
"""

import argparse
import json
import math
import os
import sys

import torch
import torch.nn.functional as F
from safetensors import safe_open
from safetensors.torch import load_file

ACTIVATIONS = {
    "gelu": lambda x: F.gelu(x),
    "gelu_new": lambda x: F.gelu(x, approximate="tanh"),
    "relu": F.relu,
}


def hf_gpt2_logits(export_dir, x):
    with open(os.path.join(export_dir, "config.json")) as f:
        cfg = json.load(f)
    assert cfg["model_type"] == "gpt2" and cfg["architectures"] == ["GPT2LMHeadModel"], cfg
    path = os.path.join(export_dir, "model.safetensors")
    with safe_open(path, framework="pt") as f:
        metadata = f.metadata()
    assert metadata is not None and metadata.get("format") == "pt", f"{path}: metadata {metadata}, from_pretrained needs format=pt"
    w = load_file(path)
    c, h, n_layer = cfg["n_embd"], cfg["n_head"], cfg["n_layer"]
    inner = cfg.get("n_inner") or 4 * c
    eps = cfg["layer_norm_epsilon"]
    act = ACTIVATIONS[cfg["activation_function"]]
    assert cfg.get("scale_attn_weights", True) and not cfg.get("scale_attn_by_inverse_layer_idx", False)
    assert w["transformer.wte.weight"].shape == (cfg["vocab_size"], c)
    assert w["transformer.wpe.weight"].shape == (cfg["n_positions"], c)

    def conv1d(x, name, n_in, n_out):
        weight, bias = w[f"{name}.weight"], w[f"{name}.bias"]
        assert weight.shape == (n_in, n_out), f"{name}.weight is {tuple(weight.shape)}, Conv1D needs (in, out) = {(n_in, n_out)}"
        return x @ weight + bias

    def ln(x, name):
        return F.layer_norm(x, (c,), w[f"{name}.weight"], w[f"{name}.bias"], eps)

    b, t = x.shape
    d = c // h
    hs = w["transformer.wte.weight"][x] + w["transformer.wpe.weight"][torch.arange(t)]
    for i in range(n_layer):
        p = f"transformer.h.{i}"
        q, k, v = conv1d(ln(hs, f"{p}.ln_1"), f"{p}.attn.c_attn", c, 3 * c).split(c, dim=2)
        q, k, v = (z.view(b, t, h, d).transpose(1, 2) for z in (q, k, v))  # (B, H, T, D)
        scores = (q @ k.transpose(-2, -1)) / math.sqrt(d)
        scores = scores.masked_fill(torch.ones(t, t, dtype=torch.bool).triu(1), float("-inf"))
        y = (scores.softmax(-1) @ v).transpose(1, 2).reshape(b, t, c)
        hs = hs + conv1d(y, f"{p}.attn.c_proj", c, c)
        m = act(conv1d(ln(hs, f"{p}.ln_2"), f"{p}.mlp.c_fc", c, inner))
        hs = hs + conv1d(m, f"{p}.mlp.c_proj", inner, c)
    head = w["lm_head.weight"]
    if cfg.get("tie_word_embeddings", True):
        assert torch.equal(head, w["transformer.wte.weight"]), "tied head differs from wte"
    return ln(hs, "transformer.ln_f") @ head.T  # (B, T, V)


def transformers_logits(export_dir, x):
    try:
        from transformers import GPT2LMHeadModel
    except ImportError:
        return None
    model = GPT2LMHeadModel.from_pretrained(export_dir).eval()
    with torch.no_grad():
        return model(x).logits


def main():
    p = argparse.ArgumentParser()
    p.add_argument("export_dir")
    p.add_argument("expected")
    p.add_argument("--tol", type=float, default=1e-5)
    a = p.parse_args()
    torch.set_num_threads(1)
    expected = load_file(a.expected)
    x, want = expected["x"], expected["logits"]
    scale = want.abs().max().item()
    ok = True
    readers = [("plain-torch GPT-2 reader", hf_gpt2_logits(a.export_dir, x))]
    hf = transformers_logits(a.export_dir, x)
    if hf is None:
        print("transformers is not installed: checked with the plain-torch reader only")
    else:
        import transformers

        readers.append((f"transformers {transformers.__version__} GPT2LMHeadModel", hf))
    for name, got in readers:
        diff = (got - want).abs().max().item()
        rel = diff / scale
        print(f"{name}: max |logit diff| {diff:.3e} ({rel:.3e} of the largest logit {scale:.3f})")
        ok &= rel <= a.tol
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
