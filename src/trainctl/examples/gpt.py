"""A GPT-2-shaped causal language model on a text corpus that needs no download (the flagship job).

`GPT` is GPT-2 124M by default (12 layers, 12 heads, 768 wide, 1024 context, vocabulary 50304 = 50257 padded
to a multiple of 128, tied embeddings): pre-norm blocks, tanh GELU, attention through
`F.scaled_dot_product_attention` (flash/cuDNN kernels on a GPU), fused AdamW with decoupled weight decay on
matrices only, linear warm-up then cosine decay, and optionally `torch.compile` of the network. It logs
`train/loss` with `self.log` every step, as users do; making that cheap is the worker's job.

`TextDataModule` builds its corpus at `setup` from text already on every machine: the Python standard
library's own source files (found through `sysconfig`), or a deterministic generated corpus. Tokens are bytes
(ids 0-255 of the padded vocabulary). Training samples are crops at offsets drawn once from a seeded
generator, served by a map-style dataset in a fixed order: the same seed gives the same batches in the same
order in any loop, and trainctl's resumable sampler can skip exactly the batches already done.
"""

from __future__ import annotations

import contextlib
import math
import sysconfig
from pathlib import Path

import pytorch_lightning as pl
import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import DataLoader, Dataset

ATTENTION_BACKENDS = ("auto", "flash", "cudnn", "efficient", "math")


# ---------------------------------------------------------------- the network (plain PyTorch)


class Block(nn.Module):
    def __init__(self, n_embd: int, n_head: int) -> None:
        super().__init__()
        self.n_head = n_head
        self.ln1, self.ln2 = nn.LayerNorm(n_embd), nn.LayerNorm(n_embd)
        self.qkv, self.proj = nn.Linear(n_embd, 3 * n_embd), nn.Linear(n_embd, n_embd)
        self.fc, self.out = nn.Linear(n_embd, 4 * n_embd), nn.Linear(4 * n_embd, n_embd)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, t, d = x.shape
        q, k, v = self.qkv(self.ln1(x)).split(d, dim=2)
        q, k, v = (z.view(b, t, self.n_head, d // self.n_head).transpose(1, 2) for z in (q, k, v))
        y = F.scaled_dot_product_attention(q, k, v, is_causal=True).transpose(1, 2).reshape(b, t, d)
        x = x + self.proj(y)
        return x + self.out(F.gelu(self.fc(self.ln2(x)), approximate="tanh"))


class GPTNetwork(nn.Module):
    """The model alone: (idx, targets) -> mean cross-entropy. A raw PyTorch loop trains exactly this."""

    def __init__(self, n_layer: int, n_head: int, n_embd: int, block_size: int, vocab_size: int) -> None:
        super().__init__()
        self.vocab_size, self.block_size = vocab_size, block_size
        self.wte, self.wpe = nn.Embedding(vocab_size, n_embd), nn.Embedding(block_size, n_embd)
        self.blocks = nn.ModuleList(Block(n_embd, n_head) for _ in range(n_layer))
        self.ln = nn.LayerNorm(n_embd)
        self.head = nn.Linear(n_embd, vocab_size, bias=False)
        self.head.weight = self.wte.weight  # tied
        self.apply(self._init)
        for name, p in self.named_parameters():  # GPT-2: residual projections scaled by depth
            if name.endswith(("proj.weight", "out.weight")):
                nn.init.normal_(p, mean=0.0, std=0.02 / math.sqrt(2 * n_layer))

    @staticmethod
    def _init(m: nn.Module) -> None:
        if isinstance(m, nn.Linear):
            nn.init.normal_(m.weight, mean=0.0, std=0.02)
            if m.bias is not None:
                nn.init.zeros_(m.bias)
        elif isinstance(m, nn.Embedding):
            nn.init.normal_(m.weight, mean=0.0, std=0.02)

    def forward(self, idx: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        pos = torch.arange(idx.shape[1], device=idx.device)
        x = self.wte(idx) + self.wpe(pos)
        for blk in self.blocks:
            x = blk(x)
        logits = self.head(self.ln(x))
        return F.cross_entropy(logits.view(-1, self.vocab_size).float(), targets.reshape(-1))


def flops_per_token(net: GPTNetwork, n_layer: int, n_embd: int, block_size: int) -> float:
    """Training FLOPs per token: 6N (N without position embeddings) + 12·L·D·T for attention (PaLM, app. B)."""
    n = sum(p.numel() for p in net.parameters()) - net.wpe.weight.numel()
    return 6.0 * n + 12.0 * n_layer * n_embd * block_size


def sdpa_backends(name: str) -> list | None:
    """The SDPA kernels to allow, most preferred first; None leaves PyTorch's own choice."""
    if name == "auto":
        return None
    from torch.nn.attention import SDPBackend

    order = {
        "flash": [SDPBackend.FLASH_ATTENTION, SDPBackend.EFFICIENT_ATTENTION],
        "cudnn": [SDPBackend.CUDNN_ATTENTION, SDPBackend.FLASH_ATTENTION, SDPBackend.EFFICIENT_ATTENTION],
        "efficient": [SDPBackend.EFFICIENT_ATTENTION],
        "math": [SDPBackend.MATH],
    }[name]
    return [*order, SDPBackend.MATH]  # math last: CPU runs and odd shapes still work


def attention_context(name: str) -> contextlib.AbstractContextManager:
    """`sdpa_kernel(...)` for `name` (a priority order where this PyTorch supports one), else a no-op."""
    backends = sdpa_backends(name)
    if backends is None:
        return contextlib.nullcontext()
    from torch.nn.attention import sdpa_kernel

    try:
        return sdpa_kernel(backends, set_priority=True)
    except TypeError:  # older PyTorch: no priority order, only the allowed set
        return sdpa_kernel(backends)


def configure_adamw(net: nn.Module, lr: float, weight_decay: float, betas: tuple[float, float], fused: bool,
                    warmup_steps: int, max_steps: int, min_lr_ratio: float) -> tuple[torch.optim.Optimizer, object]:
    """AdamW with weight decay on matrices only, and a per-step warm-up + cosine LambdaLR.

    The matrices are told by the layer that owns them, not by `p.dim()`: under fully sharded training the
    optimizer is built after sharding, when each parameter is a flat shard whose shape depends on the number of
    ranks (the groups, and a resume on another number of ranks, would change with it)."""
    matrices = {id(m.weight) for m in net.modules() if isinstance(m, nn.Linear | nn.Embedding)}
    params = [p for p in net.parameters() if p.requires_grad]
    decay = [p for p in params if id(p) in matrices]
    no_decay = [p for p in params if id(p) not in matrices]
    groups = [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}]
    kwargs = {"fused": True} if fused else {}
    opt = torch.optim.AdamW(groups, lr=lr, betas=betas, eps=1e-8, **kwargs)

    def factor(step: int) -> float:
        if step < warmup_steps:
            return (step + 1) / warmup_steps
        progress = min(1.0, (step - warmup_steps) / max(1, max_steps - warmup_steps))
        return min_lr_ratio + (1 - min_lr_ratio) * 0.5 * (1 + math.cos(math.pi * progress))

    return opt, torch.optim.lr_scheduler.LambdaLR(opt, factor)


# ---------------------------------------------------------------- the LightningModule


class GPT(pl.LightningModule):
    """GPT-2-shaped causal LM. `compile` compiles the network in place (checkpoint keys stay unchanged)."""

    def __init__(self, n_layer: int = 12, n_head: int = 12, n_embd: int = 768, block_size: int = 1024,
                 vocab_size: int = 50304, lr: float = 6e-4, weight_decay: float = 0.1, beta1: float = 0.9,
                 beta2: float = 0.95, warmup_steps: int = 700, max_steps: int = 20000, min_lr_ratio: float = 0.1,
                 compile: bool = False, compile_mode: str | None = None, fused_adamw: bool = True,
                 attention: str = "auto", tune_kernels: bool = False) -> None:
        super().__init__()
        if attention not in ATTENTION_BACKENDS:
            raise ValueError(f"attention must be one of {ATTENTION_BACKENDS}, got {attention!r}")
        if n_embd % n_head:
            raise ValueError(f"n_embd ({n_embd}) must be a multiple of n_head ({n_head})")
        self.save_hyperparameters()
        self.model = GPTNetwork(n_layer, n_head, n_embd, block_size, vocab_size)
        if compile:
            if tune_kernels:
                import torch._inductor.config as inductor_config

                # Coordinate-descent tuning of inductor's Triton kernels (cross-entropy, layernorm, GELU): +1.5 %
                # tokens/s on an H200 for ≈ 2 min more of the first compile (bench/GPU_NOTES.md).
                inductor_config.coordinate_descent_tuning = True
            self.model.compile(mode=compile_mode, dynamic=False)

    @property
    def flops_per_token(self) -> float:
        h = self.hparams
        return flops_per_token(self.model, h.n_layer, h.n_embd, h.block_size)

    def forward(self, idx: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        with attention_context(self.hparams.attention):
            return self.model(idx, targets)

    def training_step(self, batch: tuple[torch.Tensor, torch.Tensor], batch_idx: int) -> torch.Tensor:
        x, y = batch
        loss = self(x, y)
        self.log("train/loss", loss, prog_bar=True)
        return loss

    def validation_step(self, batch: tuple[torch.Tensor, torch.Tensor], batch_idx: int) -> None:
        x, y = batch
        self.log("val/loss", self(x, y), sync_dist=True)

    def configure_optimizers(self) -> dict:
        h = self.hparams
        opt, sched = configure_adamw(self.model, h.lr, h.weight_decay, (h.beta1, h.beta2), h.fused_adamw,
                                     h.warmup_steps, h.max_steps, h.min_lr_ratio)
        return {"optimizer": opt, "lr_scheduler": {"scheduler": sched, "interval": "step"}}


# ---------------------------------------------------------------- the corpus and the data


def stdlib_sources() -> list[Path]:
    """The standard library's .py files (site-packages excluded), in a fixed order."""
    root = Path(sysconfig.get_paths()["stdlib"])
    skip = {"site-packages", "dist-packages", "__pycache__"}
    return sorted(p for p in root.rglob("*.py") if not skip & set(p.relative_to(root).parts))


def synthetic_corpus(n_bytes: int, seed: int = 0) -> bytes:
    """Deterministic English-like text: Zipf-distributed made-up words in sentences, the same everywhere."""
    g = torch.Generator().manual_seed(seed)
    syllables = ["ka", "lo", "mi", "ne", "ru", "sa", "to", "vi", "an", "el", "or", "un", "est", "ing", "tra", "pol"]
    words = []
    for _ in range(2000):
        k = int(torch.randint(1, 4, (1,), generator=g))
        words.append("".join(syllables[int(i)] for i in torch.randint(0, len(syllables), (k,), generator=g)))
    weights = 1.0 / torch.arange(1, len(words) + 1, dtype=torch.float64)
    out, size = [], 0
    while size < n_bytes:
        ids = torch.multinomial(weights, 4096, replacement=True, generator=g).tolist()
        lens = torch.randint(5, 18, (512,), generator=g).tolist()
        pos = 0
        for n in lens:
            sentence = " ".join(words[i] for i in ids[pos : pos + n])
            pos += n
            if pos > len(ids):
                break
            text = sentence[:1].upper() + sentence[1:] + ". "
            out.append(text)
            size += len(text)
    return "".join(out).encode()[:n_bytes]


def build_corpus(corpus: str = "stdlib", max_bytes: int | None = None, seed: int = 0) -> torch.Tensor:
    """The corpus as a uint8 tensor of byte tokens. `stdlib` falls back to `synthetic` where no sources exist."""
    if corpus == "stdlib":
        chunks, size = [], 0
        for path in stdlib_sources():
            try:
                data = path.read_bytes()
            except OSError:
                continue
            chunks.append(data + b"\n\n")
            size += len(data) + 2
            if max_bytes is not None and size >= max_bytes:
                break
        raw = b"".join(chunks)
        if len(raw) < 1 << 20 and (max_bytes is None or len(raw) < max_bytes):  # stripped image: no sources
            raw = synthetic_corpus(max_bytes or 16 << 20, seed)
    elif corpus == "synthetic":
        raw = synthetic_corpus(max_bytes or 16 << 20, seed)
    else:
        raise ValueError(f"corpus must be 'stdlib' or 'synthetic', got {corpus!r}")
    if max_bytes is not None:
        raw = raw[:max_bytes]
    return torch.frombuffer(bytearray(raw), dtype=torch.uint8)


class CropDataset(Dataset):
    """Sample i is the window of block_size + 1 tokens at offsets[i]: (input, next-token target)."""

    def __init__(self, tokens: torch.Tensor, block_size: int, offsets: torch.Tensor) -> None:
        self.tokens, self.block_size, self.offsets = tokens, block_size, offsets

    def __len__(self) -> int:
        return len(self.offsets)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, torch.Tensor]:
        start = int(self.offsets[i])
        chunk = self.tokens[start : start + self.block_size + 1].long()
        return chunk[:-1], chunk[1:]


class TextDataModule(pl.LightningDataModule):
    """Byte-level text: seeded random crops for training (fixed order), consecutive chunks for validation.

    `samples_per_epoch` defaults to one corpus' worth of tokens. `num_workers` loader processes; pinned host
    memory whenever CUDA is available (`pin_memory: null`).
    """

    def __init__(self, batch_size: int = 16, block_size: int = 1024, corpus: str = "stdlib",
                 max_bytes: int | None = None, val_fraction: float = 0.005, samples_per_epoch: int | None = None,
                 num_workers: int = 2, pin_memory: bool | None = None, seed: int = 0) -> None:
        super().__init__()
        self.save_hyperparameters()
        self.train_set: CropDataset | None = None
        self.val_set: CropDataset | None = None

    def setup(self, stage: str | None = None) -> None:
        if self.train_set is not None:
            return
        h = self.hparams
        tokens = build_corpus(h.corpus, h.max_bytes, h.seed)
        n_val = max(h.block_size + 1, int(len(tokens) * h.val_fraction))
        train, val = tokens[:-n_val], tokens[-n_val:]
        if len(train) < 2 * (h.block_size + 1):
            raise ValueError(f"corpus too small ({len(tokens)} bytes) for block_size {h.block_size}")
        n = h.samples_per_epoch or max(h.batch_size, len(train) // h.block_size)
        g = torch.Generator().manual_seed(h.seed)
        offsets = torch.randint(0, len(train) - h.block_size - 1, (n,), generator=g)
        self.train_set = CropDataset(train, h.block_size, offsets)
        val_offsets = torch.arange(0, len(val) - h.block_size - 1 + 1, h.block_size)
        self.val_set = CropDataset(val, h.block_size, val_offsets)

    def _loader(self, ds: CropDataset, drop_last: bool) -> DataLoader:
        h = self.hparams
        pin = torch.cuda.is_available() if h.pin_memory is None else h.pin_memory
        return DataLoader(ds, batch_size=h.batch_size, shuffle=False, drop_last=drop_last, num_workers=h.num_workers,
                          pin_memory=pin, persistent_workers=h.num_workers > 0)

    def train_dataloader(self) -> DataLoader:
        assert self.train_set is not None, "setup() first"
        return self._loader(self.train_set, drop_last=True)

    def val_dataloader(self) -> DataLoader:
        assert self.val_set is not None, "setup() first"
        return self._loader(self.val_set, drop_last=False)
