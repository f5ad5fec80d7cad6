"""The PyTorch eager baseline for `sympathy bench train`.

The same GPT as src/model (nanoGPT's architecture: fused qkv, causal
scaled_dot_product_attention, exact GELU, pre-norm blocks with biased LayerNorms, a
head tied to the token embedding, GPT-2 init) and the same step as src/train.rs:
forward, cross-entropy, backward, global grad-norm clip to 1.0, AdamW (betas 0.9/0.99,
eps 1e-8, weight decay 0.1 on tensors of 2+ dims), zero_grad. Random tokens, a warm-up,
then the median over timed steps, printed as one JSON line so both programs can be
compared from one run:

    .venv/bin/python scripts/pytorch_reference.py --n-layer 4 --n-head 4 --n-embd 128 \
        --block-size 64 --batch-size 12 --steps 30

It uses torch.optim.AdamW with its defaults (on the CPU that is the per-tensor loop,
as nanoGPT runs it); --foreach picks the multi-tensor implementation instead.
"""

import argparse
import json
import statistics
import time

import torch
import torch.nn as nn
import torch.nn.functional as F


class Attention(nn.Module):
    def __init__(self, c, h):
        super().__init__()
        self.c_attn = nn.Linear(c, 3 * c)
        self.c_proj = nn.Linear(c, c)
        self.h = h

    def forward(self, x):
        b, t, c = x.shape
        q, k, v = self.c_attn(x).split(c, dim=2)
        q, k, v = (z.view(b, t, self.h, c // self.h).transpose(1, 2) for z in (q, k, v))
        y = F.scaled_dot_product_attention(q, k, v, is_causal=True)
        return self.c_proj(y.transpose(1, 2).contiguous().view(b, t, c))


class Block(nn.Module):
    def __init__(self, c, h):
        super().__init__()
        self.ln_1, self.attn = nn.LayerNorm(c), Attention(c, h)
        self.ln_2 = nn.LayerNorm(c)
        self.mlp = nn.Sequential(nn.Linear(c, 4 * c), nn.GELU(), nn.Linear(4 * c, c))

    def forward(self, x):
        x = x + self.attn(self.ln_1(x))
        return x + self.mlp(self.ln_2(x))


class GPT(nn.Module):
    def __init__(self, v, t, c, h, n_layer):
        super().__init__()
        self.wte, self.wpe = nn.Embedding(v, c), nn.Embedding(t, c)
        self.h = nn.ModuleList(Block(c, h) for _ in range(n_layer))
        self.ln_f = nn.LayerNorm(c)
        for name, p in self.named_parameters():
            if p.dim() >= 2:
                std = 0.02 / (2 * n_layer) ** 0.5 if name.endswith("c_proj.weight") else 0.02
                nn.init.normal_(p, 0.0, std)
            elif "ln" not in name:
                nn.init.zeros_(p)

    def forward(self, idx, targets):
        t = idx.shape[1]
        x = self.wte(idx) + self.wpe(torch.arange(t, device=idx.device))
        for block in self.h:
            x = block(x)
        logits = F.linear(self.ln_f(x), self.wte.weight)
        return F.cross_entropy(logits.view(-1, logits.size(-1)), targets.view(-1))


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n-layer", type=int, default=4)
    ap.add_argument("--n-head", type=int, default=4)
    ap.add_argument("--n-embd", type=int, default=128)
    ap.add_argument("--block-size", type=int, default=64)
    ap.add_argument("--batch-size", type=int, default=12)
    ap.add_argument("--vocab-size", type=int, default=131)
    ap.add_argument("--steps", type=int, default=30)
    ap.add_argument("--warmup", type=int, default=5)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--bf16", action="store_true", help="bf16 autocast (CUDA)")
    ap.add_argument("--foreach", action="store_true")
    a = ap.parse_args()

    torch.manual_seed(1337)
    dev = torch.device(a.device)
    model = GPT(a.vocab_size, a.block_size, a.n_embd, a.n_head, a.n_layer).to(dev)
    decay = [p for p in model.parameters() if p.dim() >= 2]
    no_decay = [p for p in model.parameters() if p.dim() < 2]
    opt = torch.optim.AdamW(
        [{"params": decay, "weight_decay": 0.1}, {"params": no_decay, "weight_decay": 0.0}],
        lr=1e-3, betas=(0.9, 0.99), eps=1e-8, foreach=True if a.foreach else None,
    )
    x = torch.randint(0, a.vocab_size, (a.batch_size, a.block_size), device=dev)
    y = torch.randint(0, a.vocab_size, (a.batch_size, a.block_size), device=dev)
    sync = torch.cuda.synchronize if dev.type == "cuda" else (lambda: None)

    times = []
    for i in range(a.warmup + a.steps):
        sync()
        t0 = time.perf_counter()
        with torch.autocast(dev.type, dtype=torch.bfloat16, enabled=a.bf16):
            loss = model(x, y)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        opt.zero_grad(set_to_none=True)
        sync()
        if i >= a.warmup:
            times.append(time.perf_counter() - t0)
    step_s = statistics.median(times)
    tokens = a.batch_size * a.block_size
    print(json.dumps({
        "impl": "pytorch-eager", "torch": torch.__version__, "threads": torch.get_num_threads(),
        "n_layer": a.n_layer, "n_head": a.n_head, "n_embd": a.n_embd,
        "block_size": a.block_size, "batch_size": a.batch_size, "steps": a.steps,
        "ms_step": step_s * 1e3, "tokens_per_s": tokens / step_s, "loss": loss.item(),
    }))


if __name__ == "__main__":
    main()
