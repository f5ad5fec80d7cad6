"""Reference fixtures for tests/parity.rs, computed with PyTorch.

Run with `make fixtures` (or `.venv/bin/python scripts/make_fixtures.py`). It writes,
under tests/fixtures/:

  parity.safetensors, parity.json
      A tiny GPT (2 layers, 2 heads, C=32, T=16, V=131 = sympathy's char vocabulary)
      with fixed weights from a seed, one fixed batch of ids and targets, and what
      PyTorch computes for them: the logits, the loss, every parameter's gradient, and
      the loss, learning rate and gradient norm of 10 AdamW steps (warmup + cosine,
      gradient clipping, decay only on tensors with 2 or more dimensions, the settings
      of sympathy's `tiny` preset) plus the weights after them.

  modern.safetensors, modern.json
      The same tiny GPT with the speedrun's six options (`--arch modern`): rotary
      positions, RMSNorm, QK-norm, ReLU², an untied lm_head (weights random, not zero,
      so that every part matters), with the logits, loss and gradients of one batch and
      the loss of the forward after one AdamW step.

  nanogpt/ckpt.pt, nanogpt/meta.pkl, nanogpt/converted/, nanogpt/expected.safetensors
      A checkpoint in nanoGPT's format (its `model` state dict with `_orig_mod.` and
      `transformer.` prefixes, `model_args`, a char vocabulary in meta.pkl whose ids
      are not sympathy's), the same checkpoint as scripts/nanogpt_to_safetensors.py
      converts it, and the logits the model gives for a fixed batch, so that
      `sympathy import --from nanogpt` can be checked without and with Python.

The model below is written from the papers and nanoGPT's description (GPT-2 names,
pre-norm blocks, tied head, exact GELU, LayerNorm eps 1e-5), independently of
sympathy's Rust code. Attention is written out with an explicit mask and softmax,
while sympathy calls libtorch's fused kernel, so the two paths share no attention code.
Everything runs in float32 on the CPU, as the Rust test does.
"""

import json
import math
import os
import pickle
import sys

import torch
import torch.nn.functional as F
from safetensors.torch import save_file

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
import nanogpt_to_safetensors  # noqa: E402  (the converter `sympathy import` runs)

OUT = os.path.join(HERE, "..", "tests", "fixtures")

# sympathy's char tokenizer: id = ASCII code, then <pad> 128, <eos> 129, <unk> 130.
CHAR_VOCAB_SIZE = 131
EOS = 129

# sympathy's `tiny` preset (src/config.rs), with max_steps = 10 so that the 10 steps
# run the whole schedule: 5 warmup steps, then the cosine down to min_lr.
TRAIN = dict(
    lr=1e-3,
    min_lr=1e-4,
    warmup_steps=5,
    max_steps=10,
    weight_decay=0.1,
    beta1=0.9,
    beta2=0.99,
    eps=1e-8,
    # Not the preset's 1.0: at 4.0 the first 5 steps are clipped (norms 4.08 to 5.89)
    # and the last 5 are not (2.61 to 3.55), so both branches of clipping are checked.
    grad_clip=4.0,
)

# Exact (erf) GELU, as nanoGPT's nn.GELU(); "tanh" only for the sensitivity check below.
GELU_APPROXIMATE = "none"

TEXT = (
    "def squares(n):\n    return [x**2 for x in range(n)]\n\n"
    "class Point:\n    def __init__(self, x, y):\n        self.x, self.y = x, y\n"
)


class Block(torch.nn.Module):
    """Pre-norm transformer block: x + attn(ln_1(x)), then x + mlp(ln_2(x))."""

    def __init__(self, c, n_head, bias):
        super().__init__()
        self.n_head = n_head
        self.ln_1 = torch.nn.LayerNorm(c, eps=1e-5, bias=bias)
        self.attn = torch.nn.Module()
        self.attn.c_attn = torch.nn.Linear(c, 3 * c, bias=bias)
        self.attn.c_proj = torch.nn.Linear(c, c, bias=bias)
        self.ln_2 = torch.nn.LayerNorm(c, eps=1e-5, bias=bias)
        self.mlp = torch.nn.Module()
        self.mlp.c_fc = torch.nn.Linear(c, 4 * c, bias=bias)
        self.mlp.c_proj = torch.nn.Linear(4 * c, c, bias=bias)

    def attention(self, x):
        b, t, c = x.shape
        h, d = self.n_head, c // self.n_head
        q, k, v = self.attn.c_attn(x).split(c, dim=2)
        q, k, v = (z.view(b, t, h, d).transpose(1, 2) for z in (q, k, v))  # (B, H, T, D)
        scores = (q @ k.transpose(-2, -1)) / math.sqrt(d)  # (B, H, T, T)
        future = torch.ones(t, t, dtype=torch.bool).triu(1)
        att = scores.masked_fill(future, float("-inf")).softmax(dim=-1)
        y = (att @ v).transpose(1, 2).reshape(b, t, c)  # (B, T, C)
        return self.attn.c_proj(y)

    def forward(self, x):
        x = x + self.attention(self.ln_1(x))
        h = F.gelu(self.mlp.c_fc(self.ln_2(x)), approximate=GELU_APPROXIMATE)
        return x + self.mlp.c_proj(h)


class Gpt(torch.nn.Module):
    """nanoGPT's layout: `transformer.{wte,wpe,h.i,ln_f}` and a head tied to wte."""

    def __init__(self, n_layer, n_head, n_embd, block_size, vocab_size, bias):
        super().__init__()
        self.transformer = torch.nn.Module()
        self.transformer.wte = torch.nn.Embedding(vocab_size, n_embd)
        self.transformer.wpe = torch.nn.Embedding(block_size, n_embd)
        self.transformer.h = torch.nn.ModuleList(
            Block(n_embd, n_head, bias) for _ in range(n_layer)
        )
        self.transformer.ln_f = torch.nn.LayerNorm(n_embd, eps=1e-5, bias=bias)
        self.lm_head = torch.nn.Linear(n_embd, vocab_size, bias=False)
        self.lm_head.weight = self.transformer.wte.weight  # weight tying

    def forward(self, idx):
        t = idx.shape[1]
        x = self.transformer.wte(idx) + self.transformer.wpe(torch.arange(t))
        for block in self.transformer.h:
            x = block(x)
        return self.lm_head(self.transformer.ln_f(x))  # (B, T, V)


# RoPE's pairs: "half" (dimension i with i + D/2, GPT-NeoX and Llama, sympathy's) or
# "interleaved" (2i with 2i + 1, the paper's), the latter only for the sensitivity check.
ROPE_PAIRS = "half"


def rms_norm(x, gain, eps=1e-5):
    """RMSNorm (Zhang & Sennrich 2019), written out: x / sqrt(mean(x²) + eps) · g."""
    return x * torch.rsqrt(x.pow(2).mean(dim=-1, keepdim=True) + eps) * gain


def rope(x, base=10000.0):
    """Rotary embeddings (Su et al. 2021) of x (B, H, T, D) at positions 0..T, as
    complex multiplication: each pair a complex number times e^{i·m·θ_j}."""
    b, h, t, d = x.shape
    theta = base ** (-torch.arange(0, d // 2, dtype=torch.float64) * 2 / d)
    angle = torch.outer(torch.arange(t, dtype=torch.float64), theta)  # (T, D/2)
    turn = torch.polar(torch.ones_like(angle), angle).to(torch.complex64)
    if ROPE_PAIRS == "half":
        z = torch.complex(x[..., : d // 2], x[..., d // 2 :]) * turn
        return torch.cat([z.real, z.imag], dim=-1)
    z = torch.view_as_complex(x.reshape(b, h, t, d // 2, 2).contiguous()) * turn
    return torch.view_as_real(z).reshape(b, h, t, d)


class ModernBlock(Block):
    """The block with RMSNorms (gain only), QK-norm, RoPE and ReLU²."""

    def __init__(self, c, n_head, bias):
        super().__init__(c, n_head, bias)
        d = c // n_head
        self.ln_1 = torch.nn.Module()
        self.ln_1.weight = torch.nn.Parameter(torch.ones(c))
        self.ln_2 = torch.nn.Module()
        self.ln_2.weight = torch.nn.Parameter(torch.ones(c))
        self.attn.q_norm = torch.nn.Module()
        self.attn.q_norm.weight = torch.nn.Parameter(torch.ones(d))
        self.attn.k_norm = torch.nn.Module()
        self.attn.k_norm.weight = torch.nn.Parameter(torch.ones(d))

    def attention(self, x):
        b, t, c = x.shape
        h, d = self.n_head, c // self.n_head
        q, k, v = self.attn.c_attn(x).split(c, dim=2)
        q, k, v = (z.view(b, t, h, d).transpose(1, 2) for z in (q, k, v))  # (B, H, T, D)
        q = rope(rms_norm(q, self.attn.q_norm.weight))
        k = rope(rms_norm(k, self.attn.k_norm.weight))
        scores = (q @ k.transpose(-2, -1)) / math.sqrt(d)  # (B, H, T, T)
        future = torch.ones(t, t, dtype=torch.bool).triu(1)
        att = scores.masked_fill(future, float("-inf")).softmax(dim=-1)
        y = (att @ v).transpose(1, 2).reshape(b, t, c)  # (B, T, C)
        return self.attn.c_proj(y)

    def forward(self, x):
        x = x + self.attention(rms_norm(x, self.ln_1.weight))
        h = torch.relu(self.mlp.c_fc(rms_norm(x, self.ln_2.weight))).square()
        return x + self.mlp.c_proj(h)


class ModernGpt(torch.nn.Module):
    """`--arch modern`: no wpe, RMSNorm ln_f, an untied lm_head."""

    def __init__(self, n_layer, n_head, n_embd, block_size, vocab_size, bias):
        super().__init__()
        self.transformer = torch.nn.Module()
        self.transformer.wte = torch.nn.Embedding(vocab_size, n_embd)
        self.transformer.h = torch.nn.ModuleList(
            ModernBlock(n_embd, n_head, bias) for _ in range(n_layer)
        )
        self.transformer.ln_f = torch.nn.Module()
        self.transformer.ln_f.weight = torch.nn.Parameter(torch.ones(n_embd))
        self.lm_head = torch.nn.Linear(n_embd, vocab_size, bias=False)

    def forward(self, idx):
        x = self.transformer.wte(idx)
        for block in self.transformer.h:
            x = block(x)
        return self.lm_head(rms_norm(x, self.transformer.ln_f.weight))  # (B, T, V)


def randomize(model, seed):
    """Fixed weights at a scale where every part of the model matters: Linear weights
    N(0, 1/fan_in) so that pre-activations are O(1) (at GPT-2's init std of 0.02 they
    are ~0.1, where tanh-GELU and erf-GELU agree to 1e-7 and softmax is nearly uniform,
    so a wrong activation would pass), embeddings N(0, 0.3²), and LayerNorm gains and
    all biases away from 1 and 0, so that a forward pass that ignored one would show."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            z = torch.randn(p.shape, generator=g)
            if ".ln_" in name or "_norm." in name or name.startswith("transformer.ln_f"):
                p.copy_((1.0 if name.endswith("weight") else 0.0) + 0.2 * z)
            elif name.endswith(".bias"):
                p.copy_(0.1 * z)
            elif p.dim() == 2 and ".h." in name:
                p.copy_(z / math.sqrt(p.shape[1]))
            else:
                p.copy_(0.3 * z)  # wte (also the tied head), wpe, an untied lm_head


def sympathy_names(model):
    """Parameters under sympathy's names (nanoGPT's without `transformer.`; the tied
    head appears once, as wte)."""
    return {
        name.removeprefix("transformer."): p
        for name, p in model.named_parameters()  # the tied lm_head.weight is listed once
    }


def lr_at(step, t):
    """sympathy's LrSchedule::at (and nanoGPT's get_lr): linear warmup, then cosine."""
    if step < t["warmup_steps"]:
        return t["lr"] * (step + 1) / (t["warmup_steps"] + 1)
    if step >= t["max_steps"]:
        return t["min_lr"]
    progress = (step - t["warmup_steps"]) / max(t["max_steps"] - t["warmup_steps"], 1)
    return t["min_lr"] + 0.5 * (1.0 + math.cos(math.pi * progress)) * (t["lr"] - t["min_lr"])


def batch(b, t):
    """B windows of T+1 tokens from TEXT encoded as sympathy does (ASCII codes), with an
    <eos> in the middle so a special id is covered too."""
    ids = [ord(c) for c in TEXT]
    ids = ids[:40] + [EOS] + ids[40:]
    stride = (len(ids) - t - 1) // (b - 1)
    windows = torch.tensor([ids[i * stride : i * stride + t + 1] for i in range(b)])
    return windows[:, :-1].contiguous(), windows[:, 1:].contiguous()  # (B, T), (B, T)


def sensitivity_check(model, x, logits):
    """The fixture must tell apart what a port could get subtly wrong: GPT-2's
    tanh-approximated GELU must move the logits by far more than the test's 1e-5."""
    global GELU_APPROXIMATE
    GELU_APPROXIMATE = "tanh"
    with torch.no_grad():
        moved = ((model(x) - logits).abs().max() / logits.abs().max()).item()
    GELU_APPROXIMATE = "none"
    print(f"sensitivity: tanh-GELU moves the logits by {moved:.1e} (relative)")
    assert moved > 1e-4, "the fixture cannot tell GELU variants apart; scale the weights up"


def cross_entropy(logits, y):
    """Mean loss over every position: (B, T, V), (B, T) -> ()."""
    return F.cross_entropy(logits.view(-1, logits.shape[-1]), y.view(-1))


def first_pass(model, x, y):
    """One forward and backward of a fixture's batch: its names for the parameters, the
    tensors every fixture stores (batch, weights, logits, gradients), the logits and
    the loss. The gradients stay in `.grad`."""
    params = sympathy_names(model)
    tensors = {"x": x, "y": y}
    tensors.update({f"weights.{n}": p.detach().clone() for n, p in params.items()})
    logits = model(x)
    loss = cross_entropy(logits, y)
    loss.backward()
    tensors["logits"] = logits.detach().clone()
    tensors.update({f"grads.{n}": p.grad.clone() for n, p in params.items()})
    return params, tensors, logits.detach(), loss


def adamw_like_sympathy(model):
    """PyTorch's own AdamW, configured as sympathy's optimizer: two groups, weight decay
    only for tensors with 2 or more dimensions. Callers set each group's lr per step."""
    decay = [p for p in model.parameters() if p.dim() >= 2]
    no_decay = [p for p in model.parameters() if p.dim() < 2]
    return torch.optim.AdamW(
        [
            {"params": decay, "weight_decay": TRAIN["weight_decay"]},
            {"params": no_decay, "weight_decay": 0.0},
        ],
        lr=TRAIN["lr"],
        betas=(TRAIN["beta1"], TRAIN["beta2"]),
        eps=TRAIN["eps"],
        foreach=False,  # the single-tensor path, whose formula sympathy's optim.rs follows
    )


def parity_fixtures():
    cfg = dict(n_layer=2, n_head=2, n_embd=32, block_size=16, vocab_size=CHAR_VOCAB_SIZE, bias=True)
    model = Gpt(**cfg)
    randomize(model, seed=1337)
    x, y = batch(4, cfg["block_size"])
    params, tensors, logits, loss = first_pass(model, x, y)
    sensitivity_check(model, x, logits)
    model.zero_grad(set_to_none=True)

    opt = adamw_like_sympathy(model)
    steps = []
    for step in range(10):
        lr = lr_at(step, TRAIN)
        for group in opt.param_groups:
            group["lr"] = lr
        logits = model(x)
        loss_k = cross_entropy(logits, y)
        loss_k.backward()
        norm = torch.nn.utils.clip_grad_norm_(model.parameters(), TRAIN["grad_clip"])
        opt.step()
        opt.zero_grad(set_to_none=True)
        steps.append(dict(step=step, lr=lr, loss=loss_k.item(), grad_norm=norm.item()))
        print(f"step {step}: lr {lr:.3e} loss {loss_k.item():.6f} grad norm {norm.item():.4f}")
    tensors.update({f"after10.{n}": p.detach().clone() for n, p in params.items()})

    save_file(tensors, os.path.join(OUT, "parity.safetensors"))
    meta = dict(
        generated_by="scripts/make_fixtures.py (regenerate: make fixtures)",
        torch_version=torch.__version__,
        model=dict(cfg, dropout=0.0),
        train=TRAIN,
        loss=loss.item(),
        steps=steps,
    )
    with open(os.path.join(OUT, "parity.json"), "w") as f:
        json.dump(meta, f, indent=1)
        f.write("\n")
    print(f"parity: loss {loss.item():.6f}, {sum(p.numel() for p in params.values())} parameters")


def modern_fixtures():
    """`--arch modern` on the parity model's shape and batch: logits, loss, gradients,
    and one AdamW step (the loss of the forward after it)."""
    global ROPE_PAIRS
    cfg = dict(n_layer=2, n_head=2, n_embd=32, block_size=16, vocab_size=CHAR_VOCAB_SIZE, bias=True)
    model = ModernGpt(**cfg)
    randomize(model, seed=2024)
    x, y = batch(4, cfg["block_size"])
    _, tensors, logits, loss = first_pass(model, x, y)
    ROPE_PAIRS = "interleaved"
    with torch.no_grad():
        moved = ((model(x) - logits).abs().max() / logits.abs().max()).item()
    ROPE_PAIRS = "half"
    print(f"sensitivity: interleaved RoPE pairs move the logits by {moved:.1e} (relative)")
    assert moved > 1e-3, "the fixture cannot tell RoPE pairings apart"

    opt = adamw_like_sympathy(model)
    lr = lr_at(0, TRAIN)
    for group in opt.param_groups:
        group["lr"] = lr
    norm = torch.nn.utils.clip_grad_norm_(model.parameters(), TRAIN["grad_clip"])
    opt.step()
    with torch.no_grad():
        after = model(x)
        loss_after = cross_entropy(after, y)
    save_file(tensors, os.path.join(OUT, "modern.safetensors"))
    model_cfg = dict(
        cfg, dropout=0.0, pos="rope", norm="rmsnorm", qk_norm=True, mlp="relu2",
        tied_head=False, zero_init=False,
    )
    meta = dict(
        generated_by="scripts/make_fixtures.py (regenerate: make fixtures)",
        torch_version=torch.__version__,
        model=model_cfg,
        loss=loss.item(),
        step=dict(lr=lr, grad_norm=norm.item(), loss_after=loss_after.item()),
    )
    with open(os.path.join(OUT, "modern.json"), "w") as f:
        json.dump(meta, f, indent=1)
        f.write("\n")
    print(f"modern: loss {loss.item():.6f}, after one step {loss_after.item():.6f}")


def nanogpt_fixtures():
    """A nanoGPT char checkpoint as nanoGPT's train.py writes it (after torch.compile,
    hence `_orig_mod.`), with bias=False to cover that option too."""
    text = "First Citizen:\nBefore we proceed any further, hear me speak.\n"
    chars = sorted(set(text))  # nanoGPT's data/shakespeare_char/prepare.py does this
    stoi = {ch: i for i, ch in enumerate(chars)}
    itos = {i: ch for i, ch in enumerate(chars)}
    model_args = dict(n_layer=1, n_head=2, n_embd=16, block_size=8, bias=False, vocab_size=len(chars), dropout=0.0)
    model = Gpt(**{k: v for k, v in model_args.items() if k != "dropout"})
    randomize(model, seed=7)
    state = {f"_orig_mod.{k}": v for k, v in model.state_dict().items()}
    ckpt = dict(
        model=state,
        optimizer={},
        model_args=model_args,
        iter_num=250,
        best_val_loss=torch.tensor(1.5),
        config=dict(dataset="shakespeare_char", learning_rate=1e-3, compile=True),
    )
    d = os.path.join(OUT, "nanogpt")
    os.makedirs(d, exist_ok=True)
    torch.save(ckpt, os.path.join(d, "ckpt.pt"))
    with open(os.path.join(d, "meta.pkl"), "wb") as f:
        pickle.dump(dict(vocab_size=len(chars), itos=itos, stoi=stoi), f)
    nanogpt_to_safetensors.convert(
        os.path.join(d, "ckpt.pt"), os.path.join(d, "meta.pkl"), os.path.join(d, "converted")
    )
    ids = torch.tensor([[stoi[c] for c in text[i : i + 8]] for i in (0, 15, 30)])  # (B, T) in nanoGPT ids
    with torch.no_grad():
        logits = model(ids)
    save_file({"x": ids, "logits": logits}, os.path.join(d, "expected.safetensors"))
    print(f"nanogpt: vocab {len(chars)}, {sum(p.numel() for p in model.parameters())} parameters")


if __name__ == "__main__":
    torch.manual_seed(0)
    torch.set_num_threads(1)  # one thread: the same summation order on every machine
    os.makedirs(OUT, exist_ok=True)
    parity_fixtures()
    modern_fixtures()
    nanogpt_fixtures()
