"""Training throughput of an EVP step: vprompt's engine against a loop built the way the reference code is.

The "reference-style" loop reproduces the costs of the paper's published training loop (written here from a
description of it, not from its code): images decoded and resized per image by DataLoader workers, the
prompt kept on the CPU and copied to the device every step, its batch dimension materialized with ``repeat``,
and the class-name text features recomputed every step. vprompt's loop is the engine's ``train_one_epoch``:
in-memory uint8 data batched and resized on the device, the prompt on the device, broadcast instead of
``repeat``, text features computed once; optionally bf16 autocast.

Both use the same frozen model (weights do not change speed, so a randomly initialized one serves), the same
batch size, image sizes (S = 224, s = 164) and CIFAR-sized inputs. A step is timed from asking for its batch to
the end of its update, so waiting for the data (the decoding workers of the reference-style loop) counts.
Reported: median seconds per step over the timed steps and images per second; ratios relative to the
reference-style loop, all measured in one run.

    python benchmarks/speed_evp.py --device cuda --model ViT-B-32 --batch-size 256 --steps 20 --workers 8
    python benchmarks/speed_evp.py --device cpu --model ViT-B-32 --batch-size 16 --steps 4 --workers 2 --precisions fp32

``--deterministic`` times both loops with the kernels of ``vprompt train --deterministic``.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import statistics
import sys
import time
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from torch.utils.data import DataLoader, Dataset

from vprompt.backbones import create_backbone
from vprompt.build import PromptedModel
from vprompt.config import PRECISIONS
from vprompt.data import ArrayDataset, make_loader
from vprompt.diversity import create_diversity
from vprompt.engine import deterministic_kernels, resolve_device, train_one_epoch
from vprompt.errors import USER_ERRORS, print_user_error
from vprompt.heads import ClipTextHead, build_text_classifier, clean_classname
from vprompt.optim import create_optimizer
from vprompt.prompters import create_prompter

CLASSES = [f"class number {i}" for i in range(100)]


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


class _PILArray(Dataset):
    """Per-image PIL decoding and transforms, as torchvision's CIFAR dataset does it."""

    def __init__(self, images: np.ndarray, labels: np.ndarray, transform: Callable) -> None:
        self.images, self.labels, self.transform = images, labels, transform

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, i: int):
        return self.transform(Image.fromarray(self.images[i])), int(self.labels[i])


def timed_steps(batches: Iterable, step: Callable) -> Iterator[float]:
    """Yield the wall time of ``step`` on each batch, from asking for the batch to the end of the step."""
    it = iter(batches)
    while True:
        start = time.perf_counter()
        batch = next(it, None)
        if batch is None:
            return
        step(*batch)
        yield time.perf_counter() - start


def reference_style_steps(backbone, images, labels, args, device) -> Iterator[float]:
    """Yield the wall time of each step of the reference-style loop."""
    from torchvision import transforms as T

    tf = T.Compose(
        [
            T.Resize(164, interpolation=T.InterpolationMode.BICUBIC),
            T.RandomCrop(164),
            T.RandomHorizontalFlip(),
            T.ToTensor(),
        ]
    )
    loader = DataLoader(
        _PILArray(images, labels, tf),
        batch_size=args.batch_size,
        shuffle=True,
        num_workers=args.workers,
        pin_memory=device.type == "cuda",
        persistent_workers=args.workers > 0,
        drop_last=True,
    )
    size, pad = 224, 30
    prompt = torch.zeros(1, 3, size, size, requires_grad=True)  # lives on the CPU
    mask = torch.ones(1, 3, size, size)
    mask[..., pad : size - pad, pad : size - pad] = 0
    mean, std = backbone.mean, backbone.std
    texts = [f"this is a photo of a {clean_classname(c)}" for c in CLASSES]

    def step(x: torch.Tensor, y: torch.Tensor) -> None:
        x, y = x.to(device), y.to(device)
        with torch.no_grad():  # recomputed every step, as the reference does
            text = F.normalize(backbone.encode_text(texts).float(), dim=-1)
        p = prompt.to(device).repeat(x.shape[0], 1, 1, 1)  # copied and materialized every step
        inp = (F.pad(x, (pad, pad, pad, pad)) + p - mean) / std
        feats = F.normalize(backbone.encode(inp).float(), dim=-1)
        loss = F.cross_entropy(backbone.logit_scale * feats @ text.t(), y)
        prompt.grad = None
        loss.backward()
        with torch.no_grad():
            g = prompt.grad
            prompt.sub_(70.0 * mask * g / (g.norm() + 1e-10))
        _sync(device)

    while True:
        yield from timed_steps(loader, step)


def vprompt_steps(backbone, images, labels, args, device, precision: str) -> Iterator[float]:
    """Yield the wall time of each step of vprompt's engine (one step = a one-batch epoch)."""
    prompter = create_prompter("evp", 224, 164).to(device)
    text = build_text_classifier(backbone.encode_text, CLASSES, ["this is a photo of a {}"])
    model = PromptedModel(prompter, backbone, ClipTextHead(text, backbone.logit_scale).to(device))
    opt = create_optimizer("normgrad", [prompter.prompt], lr=70.0, masks={prompter.prompt: prompter.mask})
    data = ArrayDataset(images, labels, CLASSES)
    loader = make_loader(data, args.batch_size, shuffle=True, device=device)
    diversity = create_diversity("ref")

    def step(images_b: torch.Tensor, labels_b: torch.Tensor) -> None:
        train_one_epoch(model, [(images_b, labels_b)], [opt], [], diversity, device, precision, log_every=0)
        _sync(device)

    epoch = 0
    while True:
        loader.set_epoch(epoch)  # whole batches only, as the reference-style loop's drop_last
        yield from timed_steps(((x, y) for x, y in loader if len(y) == args.batch_size), step)
        epoch += 1


def measure(steps: Iterator[float], warmup: int, n: int) -> list[float]:
    for _ in range(warmup):
        next(steps)
    return [next(steps) for _ in range(n)]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--model", default="ViT-B-32")
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--batch-size", type=int, default=256)
    ap.add_argument("--steps", type=int, default=20)
    ap.add_argument("--warmup", type=int, default=3)
    ap.add_argument("--workers", type=int, default=8)
    ap.add_argument("--images", type=int, default=0, help="dataset size (default: 4 batches)")
    ap.add_argument(
        "--precisions", nargs="+", default=["fp32", "bf16"], choices=PRECISIONS, help="vprompt precisions to time"
    )
    ap.add_argument("--out", default=None, help="append the JSON result to this file")
    ap.add_argument("--deterministic", action="store_true", help="both loops with vprompt's --deterministic kernels")
    args = ap.parse_args()
    least = {"--batch-size": (args.batch_size, 1), "--steps": (args.steps, 1), "--warmup": (args.warmup, 0),
             "--workers": (args.workers, 0), "--images": (args.images, 0)}  # fmt: skip
    for flag, (value, low) in least.items():
        if value < low:
            ap.error(f"{flag} {value} must be at least {low}")
    if 0 < args.images < args.batch_size:
        ap.error(f"--images {args.images} is fewer than one batch of --batch-size {args.batch_size}")
    if args.out:  # told now, not after the timing
        out = Path(args.out)
        if out.is_dir():
            ap.error(f"--out {args.out} is a folder; give a file to append the result to")
        if not os.access(out if out.exists() else out.parent, os.W_OK):
            ap.error(f"--out {args.out}: cannot write there (does its folder exist?); give another file")
    try:
        with deterministic_kernels() if args.deterministic else contextlib.nullcontext():  # as `vprompt train` does
            run(args)
    except USER_ERRORS as e:  # a --device or --model that vprompt rejects: one line
        print_user_error(e, ap.prog)
        sys.exit(2)


def run(args: argparse.Namespace) -> None:
    device = resolve_device(args.device)
    torch.manual_seed(0)
    backbone = create_backbone(args.model, pretrained=None, device=device)
    if backbone.input_size != 224:  # both loops are the paper's geometry: S = 224, s = 164
        raise ValueError(f"--model {args.model} takes {backbone.input_size}-pixel inputs; this benchmark needs 224")
    n = args.images or 4 * args.batch_size
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, size=(n, 32, 32, 3), dtype=np.uint8)
    labels = rng.integers(0, len(CLASSES), size=n)

    rows = {}
    rows["reference-style fp32"] = measure(
        reference_style_steps(backbone, images, labels, args, device), args.warmup, args.steps
    )
    for precision in args.precisions:
        rows[f"vprompt {precision}"] = measure(
            vprompt_steps(backbone, images, labels, args, device, precision), args.warmup, args.steps
        )
    base = statistics.median(rows["reference-style fp32"])
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else f"CPU x{torch.get_num_threads()} threads"
    print(f"\n{args.model}, batch {args.batch_size}, {args.steps} timed steps after {args.warmup}, {name}\n")
    print("| loop | median s/step | images/s | speed-up |")
    print("|---|---|---|---|")
    result = {"model": args.model, "device": name, "batch_size": args.batch_size, "steps": args.steps, "rows": {},
              "deterministic": args.deterministic}  # fmt: skip
    for label, times in rows.items():
        med = statistics.median(times)
        print(f"| {label} | {med:.4f} | {args.batch_size / med:.1f} | {base / med:.2f}x |")
        result["rows"][label] = {"median_s": med, "images_per_s": args.batch_size / med, "speedup": base / med}
    if args.out:
        with open(args.out, "a") as f:
            f.write(json.dumps(result) + "\n")


if __name__ == "__main__":
    main()
