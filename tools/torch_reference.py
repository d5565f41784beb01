#!/usr/bin/env python3
"""The PyTorch twin of the Rust ViT (crates/model/src/vit.rs), for moving weights both ways.

Same architecture, same config JSON (model-config.json), same tensor names as the Rust side's
model.safetensors (documented in crates/model/src/interchange.rs). A model-probe.safetensors holds
a few input images with the logits one side computed for them; the other side checks that it
computes the same logits.

    check   --run-dir DIR           load a Rust run's model.safetensors into PyTorch and compare
                                    logits with the run's probe (exit 1 beyond the tolerance)
    train   --config C --data-dir D --out DIR [--epochs N] [--limit N]
                                    train in PyTorch (the tutorial's recipe) the model of C (a
                                    model config, or a training config's `model`), write weights,
                                    config and probe for `vit-trainer import`
    fixture --out DIR [--config C]  a small random model (or C's network) and its probe: the
                                    Rust parity fixture, and the ONNX checks of every preset

Needs torch, safetensors and numpy (`cargo xtask setup --backend tch` installs them).
"""

import argparse
import gzip
import json
import math
import sys
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from safetensors.torch import load_file, save_file
from torch import nn

CONFIG_FILE = "model-config.json"
WEIGHTS_FILE = "model.safetensors"
PROBE_FILE = "model-probe.safetensors"
TOLERANCE = 1e-4
PIXEL_MEAN, PIXEL_STD = 0.1307, 0.3081


class Attention(nn.Module):
    """Burn's MultiHeadAttention: separate q/k/v projections without bias, scores / sqrt(head_dim)."""

    def __init__(self, dim, heads, dropout):
        super().__init__()
        self.heads = heads
        self.query = nn.Linear(dim, dim, bias=False)
        self.key = nn.Linear(dim, dim, bias=False)
        self.value = nn.Linear(dim, dim, bias=False)
        self.output = nn.Linear(dim, dim)
        self.dropout = nn.Dropout(dropout)

    def forward(self, x):
        batch, tokens, dim = x.shape
        split = lambda t: t.view(batch, tokens, self.heads, dim // self.heads).transpose(1, 2)
        q, k, v = split(self.query(x)), split(self.key(x)), split(self.value(x))
        scores = q @ k.transpose(-1, -2) / math.sqrt(dim // self.heads)
        weights = self.dropout(scores.softmax(dim=-1))
        context = (weights @ v).transpose(1, 2).reshape(batch, tokens, dim)
        return self.output(context)


class FeedForward(nn.Module):
    def __init__(self, dim, hidden, dropout):
        super().__init__()
        self.linear_inner = nn.Linear(dim, hidden)
        self.linear_outer = nn.Linear(hidden, dim)
        self.dropout = nn.Dropout(dropout)

    def forward(self, x):
        return self.linear_outer(self.dropout(F.gelu(self.linear_inner(x))))


class Block(nn.Module):
    def __init__(self, c):
        super().__init__()
        self.attention_norm = nn.LayerNorm(c["dim"])
        self.attention = Attention(c["dim"], c["heads"], c["dropout"])
        self.mlp_norm = nn.LayerNorm(c["dim"])
        self.mlp = FeedForward(c["dim"], c["mlp_dim"], c["dropout"])

    def forward(self, x):
        x = x + self.attention(self.attention_norm(x))
        return x + self.mlp(self.mlp_norm(x))


class Head(nn.Module):
    def __init__(self, dim, hidden, classes):
        super().__init__()
        self.hidden = nn.Linear(dim, hidden)
        self.output = nn.Linear(hidden, classes)

    def forward(self, x):
        return self.output(F.gelu(self.hidden(x)))


class Vit(nn.Module):
    def __init__(self, c):
        super().__init__()
        c = {"dropout": 0.0, "stem_channels": [], **c}
        self.patch = c["patch_size"]
        patches = (c["image_size"] // self.patch) ** 2
        widths = [c["channels"], *c["stem_channels"]]
        self.stem = nn.ModuleList(
            nn.Conv2d(i, o, kernel_size=3, padding=1) for i, o in zip(widths, widths[1:]))
        self.patch_embedding = nn.Linear(self.patch * self.patch * widths[-1], c["dim"])
        self.class_token = nn.Parameter(torch.randn(1, 1, c["dim"]))
        self.position_embedding = nn.Parameter(torch.randn(1, patches + 1, c["dim"]))
        self.embedding_dropout = nn.Dropout(c["dropout"])
        self.blocks = nn.ModuleList(Block(c) for _ in range(c["depth"]))
        self.head = Head(c["dim"], c["mlp_dim"], c["num_classes"])

    def forward(self, images):  # [batch, channels, h, w] -> logits [batch, classes]
        for convolution in self.stem:
            images = F.gelu(convolution(images))
        b, c, h, w = images.shape
        p = self.patch
        # 'b c (h p1) (w p2) -> b (h w) (p1 p2 c)', as the Rust side and the tutorial cut them.
        patches = images.reshape(b, c, h // p, p, w // p, p).permute(0, 2, 4, 3, 5, 1)
        tokens = self.patch_embedding(patches.reshape(b, (h // p) * (w // p), p * p * c))
        x = torch.cat([self.class_token.expand(b, -1, -1), tokens], dim=1)
        x = self.embedding_dropout(x + self.position_embedding)
        for block in self.blocks:
            x = block(x)
        return self.head(x[:, 0])


def load_run(run_dir):
    config = json.loads((run_dir / CONFIG_FILE).read_text())
    model = Vit(config)
    model.load_state_dict(load_file(run_dir / WEIGHTS_FILE), strict=True)
    return model.eval(), config


def write_run(model, config, images, out):
    out.mkdir(parents=True, exist_ok=True)
    model.eval()
    with torch.no_grad():
        logits = model(images)
    (out / CONFIG_FILE).write_text(json.dumps(config, indent=2))
    weights = {name: t.detach().contiguous() for name, t in model.state_dict().items()}
    save_file(weights, out / WEIGHTS_FILE)
    probe = {"images": images.contiguous(), "logits": logits.contiguous()}
    save_file(probe, out / PROBE_FILE, metadata={"tolerance": str(TOLERANCE)})


def read_idx(path):
    data = Path(path).read_bytes()
    if data[:2] == b"\x1f\x8b":
        data = gzip.decompress(data)
    dims = data[3]
    shape = [int.from_bytes(data[4 + 4 * i : 8 + 4 * i], "big") for i in range(dims)]
    return np.frombuffer(data, dtype=np.uint8, offset=4 + 4 * dims).reshape(shape)


def mnist(data_dir, split, limit):
    prefix = "train" if split == "train" else "t10k"
    find = lambda kind: next(Path(data_dir).glob(f"{prefix}-{kind}-idx*-ubyte*"))
    images = read_idx(find("images"))[:limit]
    labels = read_idx(find("labels"))[:limit]
    x = (torch.from_numpy(images.copy()).float() / 255.0 - PIXEL_MEAN) / PIXEL_STD
    return x.unsqueeze(1), torch.from_numpy(labels.copy()).long()


def check(args):
    model, _ = load_run(args.run_dir)
    probe = load_file(args.run_dir / PROBE_FILE)
    with torch.no_grad():
        logits = model(probe["images"])
    diff = (logits - probe["logits"]).abs().max().item()
    verdict = "agree" if diff <= TOLERANCE else "DIFFER"
    print(f"{args.run_dir}: PyTorch and Rust logits {verdict}: max abs diff {diff:.2e} "
          f"(tolerance {TOLERANCE:.0e}, {len(logits)} probe images)")
    return 0 if diff <= TOLERANCE else 1


def train(args):
    torch.manual_seed(args.seed)
    config = json.loads(args.config.read_text())
    config = config.get("model", config)
    model = Vit(config)
    x, y = mnist(args.data_dir, "train", args.limit)
    optimiser = torch.optim.Adam(model.parameters(), lr=3e-3)
    started = time.time()
    for epoch in range(args.epochs):
        model.train()
        order = torch.randperm(len(x))
        for start in range(0, len(x), 100):
            batch = order[start : start + 100]
            loss = F.nll_loss(F.log_softmax(model(x[batch]), dim=1), y[batch])
            optimiser.zero_grad()
            loss.backward()
            optimiser.step()
        print(f"epoch {epoch + 1}: last batch loss {loss.item():.4f} ({time.time() - started:.0f} s)")
    test_x, test_y = mnist(args.data_dir, "test", args.limit)
    model.eval()
    with torch.no_grad():
        accuracy = (model(test_x).argmax(1) == test_y).float().mean().item()
    print(f"PyTorch test accuracy on {len(test_x)} images: {100 * accuracy:.2f} %")
    write_run(model, config, test_x[:8], args.out)
    print(f"wrote {args.out}/{{{CONFIG_FILE}, {WEIGHTS_FILE}, {PROBE_FILE}}}")
    return 0


def fixture(args):
    torch.manual_seed(args.seed)
    config = {"image_size": 28, "channels": 1, "patch_size": 7, "dim": 32, "depth": 2,
              "heads": 4, "mlp_dim": 64, "num_classes": 10, "dropout": 0.0}
    if args.config:
        config = json.loads(args.config.read_text())
        config = config.get("model", config)
    if args.stem:
        config["stem_channels"] = [int(width) for width in args.stem.split(",")]
    model = Vit(config)
    images = torch.randn(4, config["channels"], config["image_size"], config["image_size"])
    write_run(model, config, images, args.out)
    print(f"wrote the parity fixture into {args.out}")
    return 0


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    commands = parser.add_subparsers(dest="command", required=True)
    p = commands.add_parser("check")
    p.add_argument("--run-dir", type=Path, required=True)
    p.set_defaults(run=check)
    p = commands.add_parser("train")
    p.add_argument("--config", type=Path, required=True)
    p.add_argument("--data-dir", type=Path, required=True)
    p.add_argument("--out", type=Path, required=True)
    p.add_argument("--epochs", type=int, default=1)
    p.add_argument("--limit", type=int, default=None, help="at most this many images per split")
    p.add_argument("--seed", type=int, default=0)
    p.set_defaults(run=train)
    p = commands.add_parser("fixture")
    p.add_argument("--out", type=Path, required=True)
    p.add_argument("--stem", help="convolutional stem widths, e.g. 4,8")
    p.add_argument("--config", type=Path,
                   help="the network of this model config (or training config's `model`)")
    p.add_argument("--seed", type=int, default=0)
    p.set_defaults(run=fixture)
    args = parser.parse_args()
    torch.set_num_threads(max(1, torch.get_num_threads()))
    return args.run(args)


if __name__ == "__main__":
    sys.exit(main())
