"""CPU threads: one training step of a small frozen model, timed at several PyTorch thread counts side by side.

Each repetition times every thread count once, in turn, so that a shared machine's load changes affect all of
them alike; reported are the median images per second and the ratio to the first count.

    python benchmarks/cpu_threads.py --model cifar:resnet20 --pretrained ../shared/data/cifar10_resnets \
        --input-size 32 --inner-size 24 --threads 1 2
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch

from vprompt.backbones import create_backbone
from vprompt.prompters import create_prompter


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--model", default="cifar:resnet20")
    ap.add_argument("--pretrained", default=None)
    ap.add_argument("--input-size", type=int, default=32)
    ap.add_argument("--inner-size", type=int, default=24)
    ap.add_argument("--image-size", type=int, default=28, help="size of the raw images (MNIST: 28)")
    ap.add_argument("-b", "--batch-size", type=int, default=128)
    ap.add_argument("--threads", type=int, nargs="+", default=[1, 2])
    ap.add_argument("--steps", type=int, default=4, help="steps per timing")
    ap.add_argument("--repeats", type=int, default=5)
    args = ap.parse_args()

    backbone = create_backbone(args.model, pretrained=args.pretrained)
    prompter = create_prompter("evp", args.input_size, args.inner_size)
    x = torch.rand(args.batch_size, 3, args.image_size, args.image_size)

    def step() -> None:
        prompter.prompt.grad = None
        backbone(prompter(x)).logsumexp(-1).mean().backward()

    rates: dict[int, list[float]] = {n: [] for n in args.threads}
    for n in args.threads:  # warm-up at each count
        torch.set_num_threads(n)
        step()
    for _ in range(args.repeats):
        for n in args.threads:
            torch.set_num_threads(n)
            start = time.perf_counter()
            for _ in range(args.steps):
                step()
            rates[n].append(args.batch_size * args.steps / (time.perf_counter() - start))
    base = statistics.median(rates[args.threads[0]])
    print(f"{args.model}, S={args.input_size}, batch {args.batch_size}, {args.repeats} x {args.steps} steps\n")
    print("| threads | median images/s | ratio |")
    print("|---|---|---|")
    for n, r in rates.items():
        print(f"| {n} | {statistics.median(r):.1f} | {statistics.median(r) / base:.2f}x |")


if __name__ == "__main__":
    main()
