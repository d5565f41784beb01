#!/usr/bin/env python3
"""PyTorch eager's figures for the tutorial ViT, or for the model and batch of `--config FILE`
(a training config's `model` and `batch_size`, or a model config at batch 100), measured as
crates/trainer/benches/backends measures each Burn backend: training images/s at the training
batch (Adam, cross-entropy, warm-up excluded), inference latency p50/p99 at batch 1, inference
images/s at batch 1000, peak RSS. Prints one JSON line. Uses the reference model of
tools/torch_reference.py and as many threads as the machine has cores, like the Rust side.

`--device cuda` measures on the first CUDA device (each timed run waits for the GPU to
finish); `--compile` measures the same with the model under `torch.compile` (its compilation in
the warm-up); `--sgemm` prints instead the machine's single-precision matrix product speed in
GFLOP/s (MKL through torch, 2048x2048 operands), the yardstick of the bench's share column.
"""

import argparse

import json
import math
import os
import resource
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).parent))
from torch_reference import Vit  # noqa: E402

TUTORIAL = {"image_size": 28, "channels": 1, "patch_size": 7, "dim": 64, "depth": 6,
            "heads": 8, "mlp_dim": 128, "num_classes": 10, "dropout": 0.0}


def timed(run, warm_up, minimum, maximum, budget, sync=lambda: None):
    for _ in range(warm_up):
        run()
    sync()
    seconds, started = [], time.perf_counter()
    while len(seconds) < maximum and (len(seconds) < minimum or time.perf_counter() - started < budget):
        start = time.perf_counter()
        run()
        sync()
        seconds.append(time.perf_counter() - start)
    return seconds


def percentile(values, p):
    ordered = sorted(values)
    rank = math.ceil(p / 100 * len(ordered))
    return ordered[min(max(rank, 1), len(ordered)) - 1]


def workload(path):
    """The model config and training batch of a training or model config file."""
    if path is None:
        return TUTORIAL, 100
    config = json.loads(Path(path).read_text())
    if "model" in config:
        return config["model"], config.get("batch_size", 100)
    return config, 100


def sgemm_gflops():
    side = 2048
    a, b = torch.randn(side, side), torch.randn(side, side)
    seconds = timed(lambda: torch.mm(a, b), 3, 10, 50, 10)
    return 2 * side**3 / percentile(seconds, 50) / 1e9


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--config", help="a training or model config (default: the tutorial)")
    parser.add_argument("--compile", action="store_true", help="the model under torch.compile")
    parser.add_argument("--sgemm", action="store_true", help="only the sgemm GFLOP/s")
    parser.add_argument("--device", choices=["cpu", "cuda"], default="cpu",
                        help="where to measure (cuda: the first CUDA device)")
    args = parser.parse_args()
    torch.set_num_threads(os.cpu_count() or 1)
    if args.sgemm:
        print(json.dumps({"sgemm_gflops": sgemm_gflops()}))
        return
    if args.device == "cuda" and not torch.cuda.is_available():
        sys.exit(f"--device cuda: torch {torch.__version__} sees no CUDA device")
    device = torch.device(args.device)
    sync = torch.cuda.synchronize if args.device == "cuda" else (lambda: None)
    config, batch = workload(args.config)
    torch.manual_seed(0)
    model = Vit(config).to(device)
    if args.compile:
        model = torch.compile(model)
    optimiser = torch.optim.Adam(model.parameters(), lr=3e-3, eps=1e-8)
    side, channels = config["image_size"], config["channels"]
    images = torch.randn(batch, channels, side, side, device=device)
    targets = torch.arange(batch, device=device) % config["num_classes"]

    def step():
        loss = F.cross_entropy(model(images), targets)
        optimiser.zero_grad()
        loss.backward()
        optimiser.step()
        loss.item()

    model.train()
    train = timed(step, 3, 10, 30, 60)
    model.eval()
    one = torch.randn(1, channels, side, side, device=device)
    large = torch.randn(1000, channels, side, side, device=device)
    with torch.inference_mode():
        latency = timed(lambda: model(one).softmax(1), 10, 50, 500, 20, sync)
        throughput = timed(lambda: model(large).softmax(1), 1, 3, 10, 30, sync)
    name = f"pytorch {torch.__version__.split('+')[0]}" + (" cuda" if args.device == "cuda" else "")
    print(json.dumps({
        "backend": name + (" compile" if args.compile else ""),
        "train_images_per_s": batch / percentile(train, 50),
        "train_steps_timed": len(train),
        "latency_p50_ms": 1e3 * percentile(latency, 50),
        "latency_p99_ms": 1e3 * percentile(latency, 99),
        "latency_runs": len(latency),
        "infer_images_per_s": 1000 / percentile(throughput, 50),
        "peak_rss_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
    }))


if __name__ == "__main__":
    main()
