"""Re-create the seeded splits shipped in src/vprompt/data/split_files/ (EuroSAT, SUN397, Caltech101).

    python tools/make_benchmark_splits.py            # write the files and print their sizes
    python tools/make_benchmark_splits.py --check    # only compare with the shipped files

The indices index each loader's deterministic file order (docs/DATASETS.md). EuroSAT and Caltech101 are split per
class (their per-class image counts are in the metadata), SUN397 over all images (its per-class counts are not
known without the files; every class has at least 100 images).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np

from vprompt.data.benchmark_base import load_metadata, load_seeded_split, make_seeded_split, write_seeded_split

#: Images per dataset in the loader's order: EuroSAT RGB (27,000), SUN397 as torchvision reads it (108,754),
#: Caltech101 without BACKGROUND_Google (8,677).
DATASETS = {"eurosat": 27_000, "sun397": 108_754, "caltech101": 8_677}


def build(name: str):
    counts = load_metadata(name).get("class_counts")
    return make_seeded_split(DATASETS[name], class_counts=counts)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--check", action="store_true", help="compare with the shipped files, write nothing")
    p.add_argument("--out", type=Path, default=Path(__file__).resolve().parents[1] / "src/vprompt/data/split_files")
    args = p.parse_args(argv)
    ok = True
    for name in DATASETS:
        split = build(name)
        path = args.out / f"{name}.npz"
        if args.check:
            shipped = load_seeded_split(name, path)
            same = all(np.array_equal(shipped.indices[k], split.indices[k]) for k in split.indices)
            ok &= same
            print(f"{name}: {'same' if same else 'DIFFERENT'}")
        else:
            write_seeded_split(path, split)
            sizes = " / ".join(f"{v:,}" for v in split.sizes().values())
            print(f"{name}: train / val / test = {sizes} of {split.num_samples:,} -> {path.name}")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
