#!/usr/bin/env python3
"""The exported model.onnx (`cargo xtask export --format onnx`) in ONNX Runtime.

    check --run-dir DIR [--onnx FILE] [--data-dir MNIST]
        onnx.checker (full check), the input contract in the metadata, the run's probe logits
        within 1e-4, probabilities = softmax(logits), and batch 1 against batch 1000 (the first
        1000 MNIST training images when --data-dir is given, else random gray images).
    bench --run-dir DIR [--onnx FILE] [--threads 2] [--runs 2000]
        batch-1 latency (p50) and batch-1000 images/s, as `cargo xtask bench` reports flex's.

Needs onnx, onnxruntime, safetensors and numpy (`cargo xtask setup --backend tch` installs them).
"""

import argparse
import gzip
import json
import sys
import time
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
from safetensors.numpy import load_file

ONNX_FILE = "model.onnx"
PROBE_FILE = "model-probe.safetensors"
PROBE_TOLERANCE = 1e-4
# Batch 1 and batch 1000 may sum in another order; they must agree far inside the probe's.
BATCH_TOLERANCE = 1e-5
PIXEL_MEAN, PIXEL_STD = 0.1307, 0.3081
OPSET = 17
INPUT, LOGITS, PROBABILITIES = "pixels", "logits", "probabilities"
METADATA_KEYS = ("vit_mnist.input", "vit_mnist.outputs", "vit_mnist.model_config")


def session(path, threads):
    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    return ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])


def run(model, pixels):
    """The model's (logits, probabilities) for gray images `pixels`."""
    return model.run([LOGITS, PROBABILITIES], {INPUT: pixels})


def gray_images(data_dir, count, side):
    """`count` images as float32 gray values [count, 1, side, side]: MNIST training images
    (the test set is left alone) or, without a data directory, random ones."""
    if data_dir is None:
        rng = np.random.default_rng(0)
        return rng.integers(0, 256, size=(count, 1, side, side)).astype(np.float32), "random"
    path = next(Path(data_dir).glob("train-images-idx3-ubyte*"))
    data = path.read_bytes()
    if data[:2] == b"\x1f\x8b":
        data = gzip.decompress(data)
    images = np.frombuffer(data, dtype=np.uint8, offset=16).reshape(-1, 1, 28, 28)[:count]
    return images.astype(np.float32), f"the first {count} MNIST training images"


def check(args):
    path = args.onnx or args.run_dir / ONNX_FILE
    problems = []
    proto = onnx.load(str(path))
    onnx.checker.check_model(proto, full_check=True)
    opsets = {entry.domain: entry.version for entry in proto.opset_import}
    if opsets != {"": OPSET}:
        problems.append(f"opsets {opsets}, expected the default domain at {OPSET} only")
    metadata = {entry.key: entry.value for entry in proto.metadata_props}
    problems += [f"no `{key}` in the metadata" for key in METADATA_KEYS if key not in metadata]
    operators = sorted({node.op_type for node in proto.graph.node})
    print(f"{path}: onnx.checker passed (full check); opset {OPSET}; operators {', '.join(operators)}")

    model = session(path, threads=2)
    names = ([i.name for i in model.get_inputs()], [o.name for o in model.get_outputs()])
    if names != ([INPUT], [LOGITS, PROBABILITIES]):
        problems.append(f"inputs/outputs {names}")
    config = json.loads(metadata.get("vit_mnist.model_config", "{}"))
    side = config.get("image_size", 28)

    # The probe holds normalised images; the graph reads gray values and normalises itself.
    probe = load_file(args.run_dir / PROBE_FILE)
    pixels = ((probe["images"].astype(np.float64) * PIXEL_STD + PIXEL_MEAN) * 255.0).astype(np.float32)
    logits, probabilities = run(model, pixels)
    diff = float(np.abs(logits - probe["logits"]).max())
    verdict = "agree" if diff <= PROBE_TOLERANCE else "DIFFER"
    print(f"probe ({len(pixels)} images): ONNX Runtime and Burn logits {verdict}: max abs diff "
          f"{diff:.2e} (tolerance {PROBE_TOLERANCE:.0e})")
    if diff > PROBE_TOLERANCE:
        problems.append(f"probe logits differ by {diff:.2e}")
    shifted = np.exp(logits - logits.max(axis=1, keepdims=True))
    softmax_diff = float(np.abs(shifted / shifted.sum(axis=1, keepdims=True) - probabilities).max())
    if softmax_diff > 1e-6:
        problems.append(f"probabilities differ from softmax(logits) by {softmax_diff:.2e}")

    images, source = gray_images(args.data_dir, 1000, side)
    together, _ = run(model, images)
    alone = np.concatenate([run(model, images[i : i + 1])[0] for i in range(len(images))])
    batch_diff = float(np.abs(together - alone).max())
    same_digits = int((together.argmax(1) == alone.argmax(1)).sum())
    print(f"batch 1000 against 1000 batches of 1 ({source}): max abs logit diff {batch_diff:.2e}, "
          f"same digit for {same_digits}/1000")
    if batch_diff > BATCH_TOLERANCE or same_digits != len(images):
        problems.append(f"batch 1 and batch 1000 disagree ({batch_diff:.2e}, {same_digits}/1000)")

    for problem in problems:
        print(f"error: {path}: {problem}", file=sys.stderr)
    return 1 if problems else 0


def bench(args):
    path = args.onnx or args.run_dir / ONNX_FILE
    model = session(path, args.threads)
    rng = np.random.default_rng(0)
    one = rng.integers(0, 256, size=(1, 1, 28, 28)).astype(np.float32)
    thousand = rng.integers(0, 256, size=(1000, 1, 28, 28)).astype(np.float32)
    for _ in range(50):
        run(model, one)
    times = []
    for _ in range(args.runs):
        started = time.perf_counter()
        run(model, one)
        times.append(time.perf_counter() - started)
    p50_ms = 1e3 * float(np.median(times))
    rounds = []
    for _ in range(args.rounds):
        started = time.perf_counter()
        run(model, thousand)
        rounds.append(len(thousand) / (time.perf_counter() - started))
    result = {
        "runtime": f"onnxruntime {ort.__version__} (Python, CPU, {args.threads} threads)",
        "model": str(path),
        "batch1_p50_ms": round(p50_ms, 4),
        "batch1_runs": args.runs,
        "batch1000_images_per_s": round(float(np.median(rounds))),
        "batch1000_rounds": [round(r) for r in rounds],
    }
    print(json.dumps(result))
    return 0


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    commands = parser.add_subparsers(dest="command", required=True)
    p = commands.add_parser("check")
    p.add_argument("--run-dir", type=Path, required=True)
    p.add_argument("--onnx", type=Path)
    p.add_argument("--data-dir", type=Path)
    p.set_defaults(run=check)
    p = commands.add_parser("bench")
    p.add_argument("--run-dir", type=Path, required=True)
    p.add_argument("--onnx", type=Path)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--runs", type=int, default=2000)
    p.add_argument("--rounds", type=int, default=10)
    p.set_defaults(run=bench)
    args = parser.parse_args()
    if not args.run_dir.is_dir():
        print(f"error: {args.run_dir}: no such run directory", file=sys.stderr)
        return 2
    path = args.onnx or args.run_dir / ONNX_FILE
    if not path.is_file():
        print(f"error: {path}: no such file (`cargo xtask export --run-dir {args.run_dir} "
              "--format onnx` writes it)", file=sys.stderr)
        return 2
    try:
        return args.run(args)
    except (onnx.checker.ValidationError, ort.capi.onnxruntime_pybind11_state.Fail) as error:
        print(f"error: {args.onnx or args.run_dir / ONNX_FILE}: {error}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
