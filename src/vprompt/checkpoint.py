"""Run artifacts, written atomically so an interrupted run never leaves a half-written file.

* ``prompt.safetensors``: the learned prompt (and head state) of the selected epoch, with the resolved run config
  as JSON in the metadata: everything ``vprompt eval`` needs, and no pickled code.
* ``last.pt``: the training state for ``--resume``, made of tensors, numbers and strings only, so it loads
  with ``torch.load(weights_only=True)``.
"""

from __future__ import annotations

import json
import os
import re
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file
from torch import Tensor

__all__ = ["atomic_write", "save_prompt", "load_prompt", "save_state", "load_state", "find_checkpoint", "PROMPT_FILE"]

PROMPT_FILE = "prompt.safetensors"
LAST_FILE = "last.pt"


def check_output_folder(folder: str | Path, setting: str) -> None:
    """Refuse, before any work, an output ``folder`` that cannot be made: one that is, or lies under, a file, or
    whose nearest existing folder this process may not write to. ``setting`` names where it was given
    (``--output``)."""
    for existing in (Path(folder), *Path(folder).parents):
        if existing.exists():
            if not existing.is_dir():
                raise FileExistsError(
                    f"{setting} {folder}: {existing} is a file, and runs are written to a folder; give another "
                    f"{setting}"
                )
            if not os.access(existing, os.W_OK | os.X_OK):
                raise PermissionError(
                    f"{setting} {folder}: no permission to write in {existing}; give another {setting}, or change "
                    "the folder's permissions"
                )
            return


def current_umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def atomic_write(path: str | Path, write: Callable[[str], None]) -> None:
    """Call ``write(tmp_path)`` on a temporary file beside ``path``, then rename it into place.

    The file's bytes reach the disk before the rename, and the rename before this returns, so a crash of the machine
    (not only of the process) leaves the old file or the new one, never an empty or partial one."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    os.close(fd)
    try:
        write(tmp)
        move_into_place(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def remove_unfinished_writes(folder: Path) -> None:
    """Remove the temporary files :func:`atomic_write` makes (``.<name>.<mkstemp's 8 characters>``) that a process
    killed while writing left in ``folder``. Only for a folder no other process is writing in."""
    for path in folder.iterdir():
        if re.fullmatch(r"\..+\.[a-z0-9_]{8}", path.name) and path.is_file():
            path.unlink(missing_ok=True)


def move_into_place(tmp: str | Path, path: str | Path) -> None:
    """Rename the finished temporary file ``tmp`` (made by ``mkstemp`` beside ``path``) to ``path``, with the usual
    permissions, its bytes on the disk before the rename and the rename on the disk before this returns."""
    os.chmod(tmp, 0o666 & ~current_umask())  # mkstemp makes private files; artifacts get the usual permissions
    _fsync(tmp)
    os.replace(tmp, path)
    if os.name == "posix":  # the rename itself is recorded in the folder (Windows opens no folder)
        _fsync(Path(path).parent)


def _fsync(path: str | Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def save_prompt(path: str | Path, state: dict[str, Tensor], config: dict[str, Any], **meta: Any) -> None:
    """Write a prompt artifact: ``state`` tensors plus ``config`` and ``meta`` (JSON) in the metadata."""
    tensors = {k: v.detach().to("cpu").contiguous().clone() for k, v in state.items()}
    metadata = {"format": "vprompt-prompt/1", "config": json.dumps(config)}
    metadata.update({k: json.dumps(v) for k, v in meta.items()})
    atomic_write(path, lambda tmp: save_file(tensors, tmp, metadata=metadata))


def load_prompt(path: str | Path) -> tuple[dict[str, Tensor], dict[str, Any], dict[str, Any]]:
    """Read a prompt artifact: (tensors, config, other metadata)."""
    path = Path(path)
    try:
        tensors = load_file(str(path))
        from safetensors import safe_open

        with safe_open(str(path), framework="pt") as f:
            raw = f.metadata() or {}
    except (SafetensorError, OSError) as e:
        raise ValueError(
            f"{path} is not a readable safetensors file ({e}); give another prompt.safetensors or its run folder"
        ) from e
    if raw.get("format") != "vprompt-prompt/1" or "config" not in raw:
        raise ValueError(f"{path} is a safetensors file but not a vprompt prompt (no vprompt config in its metadata)")
    try:
        meta = {k: json.loads(v) for k, v in raw.items() if k not in ("format", "config")}
        config = json.loads(raw["config"])
    except ValueError as e:
        raise ValueError(
            f"{path}: its metadata is not valid JSON ({e}); the file was changed after it was saved"
        ) from e
    if not isinstance(config, dict):
        raise ValueError(f"{path}: its config metadata is a {type(config).__name__}, not the run's settings")
    names = meta.get("classnames", [])
    if not isinstance(names, list) or not all(isinstance(n, str) for n in names):
        raise ValueError(
            f"{path}: its classnames metadata is not a list of names; the file was changed after it was saved"
        )
    return tensors, config, meta


def save_state(path: str | Path, state: dict[str, Any]) -> None:
    """Write the training state (``last.pt``) atomically."""
    atomic_write(path, lambda tmp: torch.save(state, tmp))


def torch_load_failure(e: BaseException) -> str:
    """Why ``torch.load(weights_only=True)`` could not read a file, in a few words: it holds objects whose loading
    could run code (never PyTorch's own advice, to load it with ``weights_only=False``), it is cut short or of
    another kind (a text file is ``KeyError: 101``, an opcode its unpickler does not know; a zip file cut short, the
    stream reader's error), or else the error's first line."""
    from .download import error_line

    text = str(e).lower()
    if "unsupported global" in text:
        return "it holds objects other than tensors and plain values, and loading them could run code: refused"
    unknown_opcode = isinstance(e, KeyError) and bool(e.args) and isinstance(e.args[0], int)
    if "weights only load failed" in text or "pytorchstreamreader" in text or unknown_opcode or isinstance(e, EOFError):
        return "cut short, or not a PyTorch file"
    return error_line(e)


def load_state(path: str | Path, map_location: str | torch.device = "cpu", own: bool = True) -> dict[str, Any]:
    """Read ``last.pt`` with ``weights_only=True`` (no pickled code runs). ``own``: the file is the resumed run's own
    ``last.pt``, which may be deleted to start again (not advised of a file given as ``--resume PATH``)."""
    import zipfile

    path = Path(path)
    way_out = (
        "delete it to start the run again, or resume from another (--resume PATH)"
        if own
        else "give the last.pt of a vprompt run, or its folder"
    )
    if not zipfile.is_zipfile(path):  # (torch.load would report a text file as "KeyError: 101")
        raise ValueError(
            f"{path} is not a loadable vprompt training state (not the zip archive torch.save writes: cut short, "
            f"or another kind of file); {way_out}"
        )
    try:
        state = torch.load(path, map_location=map_location, weights_only=True)
    except Exception as e:
        raise ValueError(f"{path} is not a loadable vprompt training state ({torch_load_failure(e)}); {way_out}") from e
    if not isinstance(state, dict) or state.get("format") != "vprompt-last/1":
        raise ValueError(f"{path} is not a vprompt training state (last.pt); {way_out}")
    wrong = [
        f"{key} ({type(state[key]).__name__})" if key in state else f"{key} (missing)"
        for key, kind in _STATE_ENTRIES.items()
        if not isinstance(state.get(key), kind) or (kind is int and (isinstance(state[key], bool) or state[key] < 0))
    ]
    if wrong:
        raise ValueError(f"{path} is a damaged vprompt training state (entries {', '.join(wrong)}); {way_out}")
    return state


#: The entries of ``last.pt`` a resume reads, and what each must be (the epoch: a count).
_STATE_ENTRIES: dict[str, type] = {
    "epoch": int, "best": dict, "model": dict, "optimizers": list, "schedulers": list, "config": dict,
}  # fmt: skip


def find_checkpoint(path: str | Path) -> Path:
    """A prompt file from a file or a run folder (where :data:`PROMPT_FILE` is looked up)."""
    path = Path(path)
    if path.is_dir():
        if (path / PROMPT_FILE).is_file():
            return path / PROMPT_FILE
        if (path / "config.yaml").is_file():  # a run that has not yet selected a prompt
            raise FileNotFoundError(
                f"run folder {path} has no {PROMPT_FILE} yet: a run writes it when it first selects a prompt (at its "
                "first epoch evaluated on validation, its first epoch where it has none, or the end of a run of no "
                "epochs); the run is still going, or stopped before: --resume latest continues it"
            )
        raise FileNotFoundError(f"run folder {path} has no {PROMPT_FILE}")
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint {path} does not exist (give a {PROMPT_FILE} file or its run folder)")
    if path.name == LAST_FILE:
        raise ValueError(f"{path} is a run's training state (for --resume); give its {PROMPT_FILE} or the run folder")
    return path
