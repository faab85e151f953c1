"""CPU settings: PyTorch thread counts for a training step, and batch sizes for evaluation, timed side by side.

Each repetition times every setting once, in turn, so that a shared machine's load changes affect all of them
alike; reported are the median images per second and the ratio to the first setting.

* ``--threads``: one training step of the EVP prompt (forward and backward to the input) at each thread count.
* ``--eval-batch-sizes``: the forward pass of evaluation (no gradient) at each batch size, on
  ``--eval-threads`` threads, over the same ``--eval-images`` images.

    python benchmarks/cpu_threads.py --model cifar:resnet20 --pretrained ../shared/data/cifar10_resnets \
        --input-size 32 --inner-size 24 --threads 1 2 --eval-batch-sizes 1000 128 32
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from collections.abc import Callable, Sequence

import torch

from vprompt.backbones import create_backbone
from vprompt.errors import USER_ERRORS, print_user_error
from vprompt.prompters import create_prompter


def median_rates(settings: Sequence[int], run: Callable[[int], int], repeats: int) -> dict[int, float]:
    """Median images/s of ``run(setting)`` (which returns how many images it processed) for every setting."""
    for s in settings:  # warm-up
        run(s)
    rates: dict[int, list[float]] = {s: [] for s in settings}
    for _ in range(repeats):
        for s in settings:
            start = time.perf_counter()
            n = run(s)
            rates[s].append(n / (time.perf_counter() - start))
    return {s: statistics.median(r) for s, r in rates.items()}


def print_table(title: str, column: str, rates: dict[int, float]) -> None:
    base = next(iter(rates.values()))
    print(f"{title}\n\n| {column} | median images/s | ratio |\n|---|---|---|")
    for s, r in rates.items():
        print(f"| {s} | {r:.1f} | {r / base:.2f}x |")
    print()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--model", default="cifar:resnet20")
    ap.add_argument("--pretrained", default=None)
    ap.add_argument("--input-size", type=int, default=32)
    ap.add_argument("--inner-size", type=int, default=24)
    ap.add_argument("--image-size", type=int, default=28, help="size of the raw images (MNIST: 28)")
    ap.add_argument("-b", "--batch-size", type=int, default=128)
    ap.add_argument("--threads", type=int, nargs="*", default=[1, 2])
    ap.add_argument("--steps", type=int, default=4, help="training steps per timing")
    ap.add_argument("--eval-batch-sizes", type=int, nargs="*", default=[])
    ap.add_argument("--eval-threads", type=int, default=1)
    ap.add_argument("--eval-images", type=int, default=2000)
    ap.add_argument("--repeats", type=int, default=5)
    args = ap.parse_args()
    counts = [("--threads", n) for n in args.threads] + [("--eval-batch-sizes", n) for n in args.eval_batch_sizes]
    counts += [("--image-size", args.image_size), ("--batch-size", args.batch_size), ("--steps", args.steps),
               ("--eval-threads", args.eval_threads), ("--eval-images", args.eval_images),
               ("--repeats", args.repeats)]  # fmt: skip
    for flag, value in counts:
        if value < 1:
            ap.error(f"{flag} {value} must be at least 1")
    try:
        run(args)
    except USER_ERRORS as e:  # a --model, --pretrained or geometry that vprompt rejects: one line
        print_user_error(e, ap.prog)
        sys.exit(2)


def run(args: argparse.Namespace) -> None:
    prompter = create_prompter("evp", args.input_size, args.inner_size)  # (checks the geometry before the model)
    backbone = create_backbone(args.model, pretrained=args.pretrained)
    geometry = f"{args.model}, S={args.input_size}"

    if args.threads:
        x = torch.rand(args.batch_size, 3, args.image_size, args.image_size)

        def train_steps(threads: int) -> int:
            torch.set_num_threads(threads)
            for _ in range(args.steps):
                prompter.prompt.grad = None
                backbone(prompter(x)).logsumexp(-1).mean().backward()
            return args.batch_size * args.steps

        rates = median_rates(args.threads, train_steps, args.repeats)
        title = f"training step, {geometry}, batch {args.batch_size}, {args.repeats} x {args.steps} steps"
        print_table(title, "threads", rates)

    if args.eval_batch_sizes:
        images = torch.rand(args.eval_images, 3, args.image_size, args.image_size)

        @torch.no_grad()
        def evaluate(batch_size: int) -> int:
            torch.set_num_threads(args.eval_threads)
            for i in range(0, len(images), batch_size):
                backbone(prompter(images[i : i + batch_size]))
            return len(images)

        rates = median_rates(args.eval_batch_sizes, evaluate, args.repeats)
        title = (
            f"evaluation, {geometry}, {args.eval_images} images, {args.eval_threads} thread(s), {args.repeats} repeats"
        )
        print_table(title, "eval batch", rates)


if __name__ == "__main__":
    main()
