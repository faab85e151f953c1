"""The run folder: what identifies a run, the files it holds, and how a run claims, continues or redoes it.

A run folder holds ``config.yaml`` (``config.resumed.yaml`` once continued or redone), ``splits.json``,
``metrics.jsonl``, ``prompt.safetensors``, ``last.pt`` and, once finished, ``results.json``; a linear probe holds
its extracted features instead of ``last.pt``. Every file is written whole (:func:`~vprompt.checkpoint.atomic_write`)
or, for ``metrics.jsonl``, appended line by line before the ``last.pt`` that follows it, so a run stopped at any
point resumes to what an uninterrupted one would have written.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import math
import os
import platform
import subprocess
import sys
from collections.abc import Iterator, Sequence
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import torch
import yaml
from torch import Tensor

from . import __version__
from .backbones import model_kind
from .checkpoint import LAST_FILE, PROMPT_FILE, atomic_write, remove_unfinished_writes, save_prompt
from .config import SIZE_KEYS, RunConfig, comparable
from .data import DataSplits
from .data.base import ArrayDataset, FileDataset, LabeledSubset
from .distributed import DistEnv
from .errors import DataFileError
from .heads import resolve_head

__all__ = [
    "CONFLICT",
    "DATA_KEYS",
    "FEATURES_FILE",
    "LOCK_FILE",
    "PREVIOUS_RESULTS",
    "append_jsonl",
    "changed_settings",
    "continues_own_run",
    "data_changes",
    "data_identity",
    "split_changes",
    "folder_lock",
    "holds_run",
    "images_digest",
    "pixels_digest",
    "read_results",
    "identity_keys",
    "prompt_meta",
    "refuse_other_run",
    "result_keys",
    "resume_path",
    "rewind_run_files",
    "saved_run",
    "split_size",
    "write_json",
    "write_results",
    "write_run_files",
]

# --------------------------------------------------------------------------------------------------------------
# What identifies a run


#: Settings that define what a run computes; resuming with any of them changed is refused. The others (device,
#: precision, workers, threads, evaluation batch size and frequency, logging) may change, e.g. on another machine.
_IDENTITY_KEYS = (
    "model", "pretrained", "dataset", "method", "prompter", "input_size", "inner_size", "prompt_size", "head",
    "templates", "optimizer", "lr", "momentum", "weight_decay", "schedule", "warmup_steps", "epochs", "batch_size",
    "diversity", "di_min_scale", "di_prob", "val_fraction", "split_seed", "seed", "dataset_options", "shots",
    "train_fraction", "label_map", "ilm_interval", "head_lr",
)  # fmt: skip


#: What the features of a run without a prompt depend on: the frozen model, the data and its split, and the seed
#: (which draws a randomly initialized backbone).
DATA_KEYS = (
    "model", "pretrained", "dataset", "dataset_options", "val_fraction", "split_seed", "shots", "train_fraction",
    "seed",
)  # fmt: skip

#: The settings that identify a run that trains nothing (zero-shot, with or without a prompter, and the linear
#: probe); a training run is identified by _IDENTITY_KEYS. (A probe's L2 strengths are not among them: redoing it
#: on its cached features with others is what --resume latest is for.)
_UNTRAINED_IDENTITY = {
    "zeroshot": (
        *DATA_KEYS, "method", "prompter", "input_size", "inner_size", "prompt_size", "head", "templates", "label_map",
    ),
    "linprobe": (*DATA_KEYS, "method", "input_size"),
}  # fmt: skip


def _untrained(cfg: RunConfig) -> bool:
    return cfg.method in _UNTRAINED_IDENTITY and not cfg.epochs


def identity_keys(cfg: RunConfig) -> tuple[str, ...]:
    """The settings that identify ``cfg``'s run: a run folder made with any of them changed holds another run
    (resuming there is refused, and a suite reports a conflict)."""
    return _UNTRAINED_IDENTITY[cfg.method] if _untrained(cfg) else _IDENTITY_KEYS


def result_keys(cfg: RunConfig) -> tuple[str, ...]:
    """Settings that may change when ``cfg``'s run continues, but make a finished run's results another run's."""
    if not _untrained(cfg):
        how = ("eval_every",)
    else:
        how = ("l2_grid",) if cfg.method == "linprobe" else ()
    return ("precision", *how, "data_dir")


#: How a run folder that holds a run made with other settings is reported (the demo looks for it).
CONFLICT = "holds a run with other settings"


def saved_run(run_dir: Path) -> dict[str, Any]:
    """The file the run in ``run_dir`` was last made with (its config.resumed.yaml when it was continued or redone,
    else its config.yaml), or {}: its settings under ``config``, and under ``model_input_size`` the size the model
    gave where the settings left it (absent from runs made before it was saved)."""
    path = next((p for p in (run_dir / "config.resumed.yaml", run_dir / "config.yaml") if p.exists()), run_dir)
    if not path.is_file():
        return {}
    try:
        saved = yaml.safe_load(path.read_bytes()) or {}
    except yaml.YAMLError as e:  # (cut short, edited; not UTF-8 is a YAMLError too)
        saved = f"not YAML ({' '.join(str(e).split())})"
    if not isinstance(saved, dict) or not isinstance(saved.get("config", {}), dict):
        why = saved if isinstance(saved, str) else "not the settings a run writes"
        raise DataFileError(
            f"{path}: {why}; the run folder is damaged: delete it to start the run again, or put the file back"
        )
    return saved


def same_weights(old: Any, new: Any) -> bool:
    """Whether two ``pretrained`` (or ``data_dir``) values name the same files: equal, paths to the same file or
    folder, or, where the old path is not there (another machine, another working directory), a path of the same
    name."""
    if old == new:
        return True
    if not (isinstance(old, str) and isinstance(new, str)) or not Path(new).expanduser().exists():
        return False
    was, now = Path(old).expanduser(), Path(new).expanduser()
    return was.resolve() == now.resolve() if was.exists() else was.name == now.name


def changed_settings(old: dict[str, Any], cfg: RunConfig, keys: Sequence[str] = _IDENTITY_KEYS) -> str:
    """``"k=old, ..."`` for the ``keys`` whose value in an earlier run's config ``old`` differs from ``cfg``'s;
    empty when the run is the same. Both are compared as :func:`~vprompt.config.comparable` gives them (a setting
    a run does not use is no difference). A key absent from ``old`` counts as unchanged, and so does a size left to
    its default (None) on either side: the saved prompt's shape then decides. Any other None is a value (no
    few-shot draw, random weights) and is compared. Weights files and data folders are compared by where they are
    (:func:`same_weights`), ``head`` and ``label_map`` by the head they give (``--label-map flm`` is a
    classifier's default head)."""
    old, now = comparable(old), comparable(cfg.to_dict())

    def head_of(head: str | None, label_map: str | None, model: str) -> str | None:
        try:
            return resolve_head(head or "auto", label_map, model_kind(model))
        except ValueError:  # an unknown model source or head: compared as written
            return None

    def differs(k: str) -> bool:
        new = now[k]
        if k in ("pretrained", "data_dir"):
            return not same_weights(old[k], new)
        if k in ("head", "label_map") and old[k] != new:
            before = head_of(old.get("head"), old.get("label_map"), old.get("model") or cfg.model)
            return before is None or before != head_of(cfg.head, cfg.label_map, cfg.model)
        return old[k] != new and not (k in SIZE_KEYS and (old[k] is None or new is None))

    changed = [k for k in keys if k in old and differs(k)]
    return ", ".join(f"{k}={old[k]!r} there, {now[k]!r} here" for k in changed)


def refuse_other_run(cfg: RunConfig) -> None:
    """Raise ValueError when ``cfg``'s run folder holds another run (made with other :func:`identity_keys`):
    --resume latest would otherwise write over it. Called once the prompter is built: a size left to the model's
    default (None) is then resolved, where no saved prompt's shape is there to decide it."""
    diff = changed_settings(saved_run(cfg.run_dir).get("config", {}), cfg, identity_keys(cfg))
    if diff:
        raise ValueError(f"--resume latest: {cfg.run_dir} {CONFLICT} ({diff})")


# --------------------------------------------------------------------------------------------------------------
# Its files


def _source(package: Path = Path(__file__).parent) -> dict[str, Any]:
    """The commit of the source tree holding ``package`` (vprompt's own) that a run was made with (``git_sha``), and
    whether that tree had uncommitted edits (``git_dirty``); both None for an installed package, even one inside
    another git project."""

    def git(*args: str) -> subprocess.CompletedProcess[str] | None:
        try:
            return subprocess.run(["git", *args], cwd=package, capture_output=True, text=True, timeout=5)
        except (OSError, subprocess.SubprocessError):
            return None

    tracked = git("ls-files", "--error-unmatch", "__init__.py")  # (a venv in a user's repository is not)
    head = git("rev-parse", "HEAD") if tracked is not None and tracked.returncode == 0 else None
    if head is None or head.returncode != 0 or not head.stdout.strip():
        return {"git_sha": None, "git_dirty": None}
    status = git("--no-optional-locks", "status", "--porcelain", "--untracked-files=no")  # (no index lock taken)
    dirty = bool(status.stdout.strip()) if status is not None and status.returncode == 0 else None
    return {"git_sha": head.stdout.strip(), "git_dirty": dirty}


def _versions() -> dict[str, str]:
    import open_clip
    import torchvision

    return {
        "vprompt": __version__,
        "python": platform.python_version(),
        "torch": str(torch.__version__),
        "torchvision": str(torchvision.__version__),
        "open_clip": str(getattr(open_clip, "__version__", "?")),
    }


def split_size(split: Any) -> int:
    """The length of a split of :class:`DataSplits` (or of its loader), 0 where it has none."""
    return len(split) if split is not None else 0


def _unwrapped(ds: Any) -> tuple[Any, list[int] | None]:
    """The dataset under ``ds``'s subsets, and the indices of ``ds``'s images in it, in order (None: all of it)."""
    indices = None
    while isinstance(ds, LabeledSubset):
        indices = ds.indices if indices is None else [ds.indices[i] for i in indices]
        ds = ds.dataset
    return ds, indices


def _file_names(ds: Any) -> list[str] | None:
    """The file of each image of ``ds`` (a :class:`FileDataset` or a subset of one, in order), or None (images in
    memory, or decoded by a loader)."""
    ds, indices = _unwrapped(ds)
    if not isinstance(ds, FileDataset) or not all(isinstance(s, (str, Path)) for s, _ in ds.samples):
        return None
    return [str(ds.samples[i][0]) for i in (range(len(ds.samples)) if indices is None else indices)]


def images_digest(parts: Sequence[Any]) -> str:
    """A digest of the labels of ``parts`` (datasets, or None; the size of one that keeps no ``targets``) and, where
    they are files, of the files' names relative to the folder they share (so that the data may move): files renamed
    are other images, a file whose contents changed under its name is not."""
    names = [_file_names(ds) if ds is not None else None for ds in parts]
    files = [n for part in names if part for n in part]
    root = os.path.commonpath(files) if len(files) > 1 else ""
    cut = len(root)  # (each file lies under root: its name after it, without relpath's cost per file)
    relative = [[n[cut:] for n in part] if part else None for part in names]
    return hashlib.sha256(json.dumps([relative, [_labels(ds) for ds in parts]]).encode()).hexdigest()


def pixels_digest(parts: Sequence[Any]) -> str | None:
    """A digest of the pixels of ``parts`` held in memory (an :class:`ArrayDataset` or a subset of one, in order),
    which :func:`images_digest` knows by their labels alone; None where no part holds its images in memory."""
    digest, found = hashlib.sha256(), False
    for part in parts:
        ds, indices = _unwrapped(part)
        if isinstance(ds, ArrayDataset):
            images = ds.images if indices is None else ds.images[torch.as_tensor(indices, dtype=torch.long)]
            digest.update(repr(tuple(images.shape)).encode())
            digest.update(images.cpu().contiguous().numpy())  # (the buffer, not a copy of it)
            found = True
    return digest.hexdigest() if found else None


def _labels(ds: Any) -> list[int] | int | None:
    if ds is None:
        return None
    targets = getattr(ds, "targets", None)
    return len(ds) if targets is None else torch.as_tensor(targets, dtype=torch.int64).tolist()


def data_identity(data: DataSplits) -> dict[str, Any]:
    """What a resumed run must find again: the classes, the number of training and validation images, a digest of
    which images were held out or drawn, one of the images' files and labels, and one of the pixels of images held
    in memory (which have no files)."""
    split = json.dumps(data.split_indices, sort_keys=True).encode()
    val = json.dumps([images_digest([data.val]), pixels_digest([data.val])]).encode()
    identity = {
        "classes": list(data.classnames),
        "train images": split_size(data.train),
        "val images": split_size(data.val),
        "split": hashlib.sha256(split).hexdigest(),
        "images": images_digest([data.train, data.val]),
        "val": hashlib.sha256(val).hexdigest(),  # the validation images alone, whatever the training ones
    }
    pixels = pixels_digest([data.train, data.val])
    return identity if pixels is None else {**identity, "pixels": pixels}


def split_changes(was: dict[str, Any] | None, now: dict[str, Any], split: str) -> str:
    """How the data of :func:`data_identity` ``now`` differ from ``was`` for evaluating a run on its ``split``
    (train or val), or "": the validation split is the run's where its classes and images are (training images
    added to a dataset with its own validation split leave it as it was); a run saved before the identity had the
    validation images alone is compared on all it saved."""
    if split == "val" and was is not None and was.get("val") == now["val"] and was.get("classes") == now["classes"]:
        return ""
    return data_changes(was, now)


def prompt_meta(
    data: DataSplits, epoch: int, val_acc1: float | None, identity: dict[str, Any] | None = None
) -> dict[str, Any]:
    """What a prompt file holds besides its tensors and settings: the epoch selected and its validation accuracy,
    the classes its head maps by position, and the data it was trained on (``vprompt eval --split train|val``
    evaluates on those images only; ``identity``: :func:`data_identity` of ``data``, where the caller has it)."""
    identity = identity if identity is not None else data_identity(data)
    return {"epoch": epoch, "classnames": list(data.classnames), "val_acc1": val_acc1, "data": identity}


def data_changes(was: dict[str, Any] | None, now: dict[str, Any]) -> str:
    """How the data of :func:`data_identity` ``now`` differs from ``was`` (a run's start), or "" (also when the
    run saved none)."""
    if was is None:
        return ""
    now = {k: v for k, v in now.items() if k in was}  # (what a run saved before it was part of the identity is not)
    if was == now:
        return ""
    what = [f"{k}: {was.get(k)} then, {now[k]} now" for k in ("train images", "val images") if was.get(k) != now[k]]
    before, after = list(was.get("classes", [])), now["classes"]
    if before != after:
        named = []
        for how, names in (("without", set(before) - set(after)), ("with", set(after) - set(before))):
            if names:
                shown = sorted(names)
                named.append(f"{how} {', '.join(map(repr, shown[:5]))}{' ...' if len(shown) > 5 else ''}")
        what.insert(0, f"classes: {len(before)} then, {len(after)} now, {', '.join(named) or 'in another order'}")
    if not what and was.get("split") == now.get("split"):
        what = [
            "the same number of images, but other files, pixels or labels (renamed, replaced, edited or relabelled)"
        ]
    return "; ".join(what) or "other images held out for validation or drawn for training"


def write_json(path: Path, obj: Any) -> None:
    atomic_write(path, lambda tmp: Path(tmp).write_text(json.dumps(obj, indent=2) + "\n"))


def append_jsonl(path: Path, obj: dict[str, Any]) -> None:
    """Append a line, on disk before the ``last.pt`` written after it: a resume keeps, never rebuilds, the lines."""
    with open(path, "a") as f:
        f.write(json.dumps(obj) + "\n")
        f.flush()
        os.fsync(f.fileno())


#: A linear probe's extracted features (it has no training state): they make its folder hold a run.
FEATURES_FILE = "features.safetensors"

#: Where a finished run's results wait while the run is redone (``--resume latest`` with other settings, or a probe
#: swept again): the redo's results.json replaces them, an interruption leaves them here.
PREVIOUS_RESULTS = "results.previous.json"


def write_results(run_dir: Path, results: dict[str, Any]) -> None:
    """``results.json``: the run is finished, and the results of an earlier finish it redid are gone."""
    write_json(run_dir / "results.json", results)
    (run_dir / PREVIOUS_RESULTS).unlink(missing_ok=True)


def read_results(run_dir: Path) -> dict[str, Any]:
    """A finished run's ``results.json``, refused in one line naming it when it is not one (cut short, edited): what
    reads it (a suite's table, the demo's report) would otherwise fail on a key or show no accuracy."""
    path = run_dir / "results.json"
    try:
        results = json.loads(path.read_bytes())
    except (UnicodeDecodeError, ValueError) as e:
        results, why = None, f"not JSON ({e})"
    else:
        why = "no test accuracy (test: acc1)"
    test = results.get("test") if isinstance(results, dict) else None
    if not isinstance(test, dict) or not isinstance(test.get("acc1"), (int, float)):
        raise DataFileError(
            f"{path} is not a finished run's results: {why}; delete it and the run is redone (vprompt train "
            "--resume latest with the run's settings, or the suite that made it)"
        )
    return results


def holds_run(run_dir: Path) -> bool:
    """Whether ``run_dir`` holds training state, a probe's extracted features, or results (a finished run's, or
    those waiting while it is redone): what a run that is not continuing it would write over."""
    return any((run_dir / name).exists() for name in (LAST_FILE, FEATURES_FILE, "results.json", PREVIOUS_RESULTS))


def _held_run(run_dir: Path) -> str:
    """The run ``run_dir`` holds and what ``--resume latest`` does with it, for the refusal to start over it."""
    if not (run_dir / "results.json").is_file():
        redone = f"a run being redone (its earlier results wait in {PREVIOUS_RESULTS})"
        held = redone if (run_dir / PREVIOUS_RESULTS).is_file() else "an unfinished run"
        return f"{held}; pass --resume latest to continue it"
    try:
        done = f"a finished run (test acc {read_results(run_dir)['test']['acc1']:.2f}, in its results.json)"
    except DataFileError as e:
        return f"a run whose results are damaged ({e})"
    again = "the test evaluation; a probe's fit on its cached features"
    return f"{done}; --resume latest redoes its last step ({again}) with its settings"


def resume_path(cfg: RunConfig) -> Path | None:
    """The ``last.pt`` to resume from, or None to start afresh (refusing to overwrite a finished or started run).
    ``--resume PATH`` of another run folder continues that run's state in this one, which must hold no run."""
    run_dir = cfg.run_dir
    held = holds_run(run_dir)
    if cfg.resume is None:
        if held:
            raise FileExistsError(
                f"run folder {run_dir} already holds {_held_run(run_dir)}, or --name to start another"
            )
        return None
    if cfg.resume == "latest":
        path = run_dir / LAST_FILE
        if not path.exists() and cfg.epochs and (run_dir / "results.json").exists():
            refuse_other_run(cfg)  # (a probe's folder holds no training state either: it holds another run)
            raise FileExistsError(
                f"--resume latest: {run_dir} holds a finished run but not its training state ({LAST_FILE}) to continue "
                "from, so it would be trained again from scratch; delete its results.json to do that, or --name to "
                "start another run"
            )
        if not path.exists():  # a run without training state (zeroshot) is redone: see refuse_other_run
            return None
        return path
    path = Path(cfg.resume).expanduser()
    path = path / LAST_FILE if path.is_dir() else path
    if not path.is_file():
        raise FileNotFoundError(
            f"--resume {cfg.resume}: no training state at {path}; give 'latest' (this run's own) or the path of a "
            f"run folder or its {LAST_FILE}"
        )
    if held and not continues_own_run(cfg):
        raise FileExistsError(
            f"--resume {cfg.resume}: run folder {run_dir} already holds another run; the state of {path.parent} "
            "continues in a new folder (--name) or in its own"
        )
    return path


def rewind_run_files(
    run_dir: Path,
    source: Path,
    epoch: int,
    best: dict[str, Any],
    best_state: dict[str, Tensor],
    config: dict[str, Any],
    data: DataSplits,
) -> None:
    """Make ``run_dir`` hold what the run's start says, in case it stopped between writing its files and writing
    ``last.pt``: the metrics of ``source`` (the folder of the state resumed from, or ``run_dir``) up to ``epoch``
    (0: a fresh start, which keeps none of an earlier attempt), and the prompt selected so far (none before the first
    selection)."""

    def lines_of(folder: Path) -> list[str]:
        path = folder / "metrics.jsonl"
        return path.read_text().splitlines(keepends=True) if path.exists() else []

    metrics, old = run_dir / "metrics.jsonl", lines_of(run_dir)
    lines = old if source.resolve() == run_dir.resolve() else lines_of(source)
    kept = [line for line in lines if _epoch_of(line) <= epoch]
    if kept != old:
        atomic_write(metrics, lambda tmp: Path(tmp).write_text("".join(kept)))
    if best_state:
        save_prompt(run_dir / PROMPT_FILE, best_state, config, **prompt_meta(data, best["epoch"], best["val_acc1"]))
    else:  # nothing selected yet (a fresh start, or no evaluation yet with --eval-every): no prompt of a later epoch
        (run_dir / PROMPT_FILE).unlink(missing_ok=True)


def _epoch_of(line: str) -> float:
    """The epoch of a metrics.jsonl line; infinite (dropped by a rewind) for a line cut short by an interruption."""
    try:
        return json.loads(line)["epoch"] if line.endswith("\n") else math.inf
    except (ValueError, KeyError, TypeError):
        return math.inf


def continues_own_run(cfg: RunConfig) -> bool:
    """Whether ``cfg`` continues or redoes the run its folder holds (``--resume latest``, or ``--resume`` of the
    folder's own state), rather than starting a new one there (no ``--resume``, or another folder's state)."""
    if cfg.resume in (None, "latest"):
        return cfg.resume == "latest"
    path = Path(cfg.resume).expanduser()
    return (path if path.is_dir() else path.parent).resolve() == cfg.run_dir.resolve()


def write_run_files(
    cfg: RunConfig, data: DataSplits, run_dir: Path, model_input_size: int, from_state: bool = False
) -> None:
    """config.yaml, or config.resumed.yaml for a run that continues the folder's own (:func:`continues_own_run`),
    with the model's own input size; and splits.json. A new run drops what an attempt before it left of either.
    The time is ``resumed`` for a run that continues a saved training state (``from_state``), else ``started``."""
    run_dir.mkdir(parents=True, exist_ok=True)
    resumed = continues_own_run(cfg)
    meta = {
        "config": cfg.to_dict(),
        "model_input_size": model_input_size,
        "argv": sys.argv,
        "versions": _versions(),
        **_source(),
        "resumed" if from_state else "started": datetime.now(timezone.utc).isoformat(timespec="seconds"),
    }
    name = "config.yaml" if not (resumed and (run_dir / "config.yaml").exists()) else "config.resumed.yaml"
    # Results of an earlier finish are redone with these settings: until then the run is unfinished, and they wait
    # aside (write_results drops them). A new run keeps no settings of another: saved_run() reads
    # config.resumed.yaml first.
    if (run_dir / "results.json").exists():
        os.replace(run_dir / "results.json", run_dir / PREVIOUS_RESULTS)
    if not resumed:
        (run_dir / "config.resumed.yaml").unlink(missing_ok=True)
    atomic_write(run_dir / name, lambda tmp: Path(tmp).write_text(yaml.safe_dump(meta, sort_keys=False)))
    if not data.split_indices:
        (run_dir / "splits.json").unlink(missing_ok=True)
    else:
        write_json(
            run_dir / "splits.json",
            {
                "dataset": cfg.dataset,
                "val_source": data.val_source,
                "val_fraction": cfg.val_fraction,
                "split_seed": cfg.split_seed,
                "shots": cfg.shots,
                "train_fraction": cfg.train_fraction,
                **data.split_indices,
            },
        )


LOCK_FILE = ".lock"


@contextlib.contextmanager
def folder_lock(
    run_dir: Path, env: DistEnv, what: str = "run folder", fix: str = "give this run another --name or --output"
) -> Iterator[None]:
    """Hold ``run_dir``'s lock file for the run (the main process, where the OS has ``flock``): another process
    given the same folder, e.g. the same suite started twice, is refused instead of writing over this run (told
    as ``what``, with ``fix`` as the way round)."""
    try:
        import fcntl
    except ImportError:  # not POSIX
        fcntl = None  # type: ignore[assignment]
    if fcntl is None or not env.is_main:
        yield
        return
    run_dir.mkdir(parents=True, exist_ok=True)
    with open(run_dir / LOCK_FILE, "a") as f:
        try:
            fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise FileExistsError(
                f"{what} {run_dir} is in use: another process is running there (it holds {run_dir / LOCK_FILE}); "
                f"wait for it to finish, or {fix}"
            ) from None
        remove_unfinished_writes(run_dir)  # (locked: no other process is writing them)
        yield
