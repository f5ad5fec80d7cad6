"""Converts a nanoGPT checkpoint (ckpt.pt, and meta.pkl for a char model) into files
that Rust can read: OUT/model.safetensors and OUT/nanogpt.json.

    python scripts/nanogpt_to_safetensors.py out/ckpt.pt --meta data/shakespeare_char/meta.pkl OUT

`sympathy import --from nanogpt ckpt.pt` runs this same script (it is compiled into the
binary) with the venv's python, so most users never call it by hand; calling it by hand
and then `sympathy import --from nanogpt OUT` is the two-step path, for a machine where
the checkpoint and sympathy do not share a python.

This script only changes the container. Every check and every renaming (prefixes, the
tied head, the vocabulary remap) is done by sympathy's src/interop/nanogpt.rs, so it is tested
in Rust without Python.

Neither file is unpickled with arbitrary code: the checkpoint is read with
`torch.load(weights_only=True)` and meta.pkl by an unpickler that refuses every
global, since a nanoGPT meta.pkl holds only a dict of ints and strings.
"""

import argparse
import json
import os
import pickle
import sys

import torch
from safetensors.torch import save_file


# Exit codes that tell sympathy which input is at fault (the message is stderr's last line).
BAD_CKPT, BAD_META = 3, 4


class Refused(Exception):
    def __init__(self, code, message):
        super().__init__(message)
        self.code = code


class _DataOnly(pickle.Unpickler):
    def find_class(self, module, name):
        raise pickle.UnpicklingError(f"refers to {module}.{name}; a nanoGPT meta.pkl holds only plain data")


def _one_line(e):
    return f"{type(e).__name__}: {(str(e).strip().splitlines() or [''])[0]}"


def _plain(value):
    """model_args values as JSON (a tensor-valued entry becomes its number)."""
    if isinstance(value, torch.Tensor):
        return value.item()
    return value


def read_ckpt(path):
    try:
        ckpt = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as e:
        # torch's own message is several paragraphs; the gist fits one line.
        raise Refused(BAD_CKPT, "torch.load(weights_only=True) refused it: it holds Python objects besides tensors and plain data, which a nanoGPT ckpt.pt does not")
    except Exception as e:
        raise Refused(BAD_CKPT, f"torch.load cannot read it ({_one_line(e)}); is it a nanoGPT ckpt.pt?")
    if not isinstance(ckpt, dict) or "model" not in ckpt or "model_args" not in ckpt:
        keys = sorted(ckpt) if isinstance(ckpt, dict) else type(ckpt).__name__
        raise Refused(BAD_CKPT, f"not a nanoGPT checkpoint (expected the keys 'model' and 'model_args', found {keys})")
    return ckpt


def read_itos(path):
    """meta.pkl's id -> character table, as a list indexed by id."""
    try:
        with open(path, "rb") as f:
            meta = _DataOnly(f).load()
        table = meta["itos"]
        return [table[i] for i in range(len(table))]
    except Exception as e:
        raise Refused(BAD_META, f"{path}: not a nanoGPT char meta.pkl ({_one_line(e)})")


def convert(ckpt_path, meta_path, out_dir):
    ckpt = read_ckpt(ckpt_path)
    tensors = {}
    for name, t in ckpt["model"].items():
        t = t.detach()
        if t.is_floating_point():
            t = t.float()
        # clone: nanoGPT's tied lm_head.weight shares wte's storage, which safetensors refuses
        tensors[name] = t.contiguous().clone()
    info = dict(
        model_args={k: _plain(v) for k, v in ckpt["model_args"].items()},
        iter_num=_plain(ckpt.get("iter_num")),
        itos=read_itos(meta_path) if meta_path else None,
    )
    os.makedirs(out_dir, exist_ok=True)
    save_file(tensors, os.path.join(out_dir, "model.safetensors"))
    with open(os.path.join(out_dir, "nanogpt.json"), "w") as f:
        json.dump(info, f, indent=1)
        f.write("\n")


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("ckpt", help="nanoGPT checkpoint, e.g. out-shakespeare-char/ckpt.pt")
    p.add_argument("out", help="folder to write model.safetensors and nanogpt.json to")
    p.add_argument("--meta", help="the dataset's meta.pkl (char vocabulary)")
    a = p.parse_args()
    try:
        convert(a.ckpt, a.meta, a.out)
    except Refused as e:
        print(f"error: {e}", file=sys.stderr)
        return e.code
    return 0


if __name__ == "__main__":
    sys.exit(main())
