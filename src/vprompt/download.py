"""Verified downloads: every file fetched from the network (checkpoints, MNIST, CIFAR-C) goes through here.

A download streams into a temporary file beside its destination, hashing as it goes, and is renamed into place
only when the digest is the published one, so neither an interrupted nor a tampered download ever lies under the
real name for a later run to trust.
"""

from __future__ import annotations

import contextlib
import hashlib
import http.client
import os
import shutil
import socket
import tempfile
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

__all__ = ["file_digest", "download_verified", "DigestMismatch", "fetching_weights", "first_line", "WEIGHTS_SUFFIXES"]

#: How weights files are named: a name ending so is a file, not a tag such as ``openai``.
WEIGHTS_SUFFIXES = (".th", ".pth", ".pt", ".bin", ".ckpt", ".safetensors")

_CHUNK = 1 << 20
TIMEOUT_S = 60.0
#: A partial download (or extraction) untouched for this long was left by a process that was killed.
STALE_PART_S = 3600.0


def clear_stale(folder: Path, pattern: str) -> None:
    """Remove what matches ``pattern`` in ``folder`` (files, or folders with all they hold) where nothing has been
    written for :data:`STALE_PART_S`: what a killed download or extraction left. One in progress is younger."""
    for stale in folder.glob(pattern):
        with contextlib.suppress(OSError):
            paths = [stale, *(Path(d) / n for d, _, names in os.walk(stale) for n in names)]
            if time.time() - max(p.stat().st_mtime for p in paths) > STALE_PART_S:
                shutil.rmtree(stale) if stale.is_dir() else stale.unlink()


class DigestMismatch(ValueError):
    """A file's digest is not the published one."""


def first_line(exc: BaseException) -> str:
    """The first non-empty line of ``exc``'s message, at most 300 characters ("" when it has none): a state-dict
    mismatch or a hub error runs to many lines."""
    line = next((line.strip() for line in str(exc).splitlines() if line.strip()), "")
    return line if len(line) <= 300 else line[:300].rsplit(" ", 1)[0] + " ..."  # (at a word's end)


def error_line(e: BaseException) -> str:
    """``Type: the first line of the message`` (see :func:`first_line`)."""
    first = first_line(e)
    return f"{type(e).__name__}: {first}" if first else type(e).__name__


def _is_fetch_failure(exc: BaseException) -> bool:
    """Whether ``exc`` says the weights could not be fetched (no network, or not in an offline cache), as opposed
    to a corrupt file, a full disk or too little memory, which keep their own message."""
    if isinstance(exc, (urllib.error.URLError, ConnectionError, TimeoutError)):
        return True
    if type(exc).__module__.split(".")[0] in ("huggingface_hub", "requests", "urllib3"):  # hub (timm, open_clip)
        return True
    return isinstance(exc, RuntimeError) and "failed to download" in str(exc).lower()  # open_clip wraps the above


@contextmanager
def fetching_weights(
    what: str,
    offline: str = "pass --pretrained PATH pointing to a local copy",
    hub: bool = False,
    thing: str = "weights",
) -> Iterator[None]:
    """Around a download of pretrained weights (by us, open_clip, timm or torchvision): a failure to fetch them
    becomes one line naming ``what`` (the model and its tag) and the ``offline`` way round it; other errors pass.
    ``thing`` is what is fetched ("weights", or a Hub model's "config"). For a download through the Hugging Face
    Hub (``hub``), where the hub's host cannot be resolved, the hub is in offline mode meanwhile: it reads its cache
    at once, where it would retry for about 50 s and then read it."""
    unreachable = _hub_unreachable() if hub else None
    try:
        with _hub_offline() if unreachable else contextlib.nullcontext():
            yield
    except (OSError, RuntimeError) as exc:
        if not _is_fetch_failure(exc):
            raise
        reason = first_line(exc) or type(exc).__name__
        by_hub = any(type(e).__module__.startswith("huggingface_hub") for e in _chain(exc))
        by_hub = by_hub and not unreachable and not _hub_offline_set()
        quick = " (HF_HUB_OFFLINE=1 has the Hugging Face Hub fail at once instead of retrying)" if by_hub else ""
        quick = f" ({unreachable} cannot be resolved: no network)" if unreachable else quick
        raise FileNotFoundError(
            f"could not get the {thing} of {what} ({reason}); if you are offline, {offline}{quick}"
        ) from exc


def _hub_offline_set() -> bool:
    return os.environ.get("HF_HUB_OFFLINE", "").strip().lower() in ("1", "true", "yes", "on")


def _hub_unreachable() -> str | None:
    """The Hugging Face Hub's host name where it cannot be resolved and no proxy is set (a proxy resolves names
    itself), else None; also None where the hub is not installed or is already in offline mode."""
    try:
        from huggingface_hub import constants
    except ImportError:
        return None
    host = urllib.parse.urlparse(constants.ENDPOINT).hostname  # (HF_ENDPOINT's, a mirror's)
    proxies = urllib.request.getproxies()
    if not host or constants.HF_HUB_OFFLINE or _hub_offline_set() or proxies.get("https") or proxies.get("all"):
        return None
    try:
        socket.getaddrinfo(host, 443)
    except (socket.gaierror, UnicodeError):
        return host
    return None


@contextmanager
def _hub_offline() -> Iterator[None]:
    """The Hugging Face Hub in offline mode (what ``HF_HUB_OFFLINE=1`` sets when it is imported) while in here."""
    from huggingface_hub import constants, utils

    reset = getattr(utils, "reset_sessions", lambda: None)  # (a hub before 1.0 sets the mode in the sessions it keeps)
    constants.HF_HUB_OFFLINE = True
    reset()
    try:
        yield
    finally:
        constants.HF_HUB_OFFLINE = False
        reset()


def _chain(exc: BaseException) -> Iterator[BaseException]:
    """``exc`` and the exceptions it was raised from or during, innermost last."""
    seen: set[int] = set()
    while exc is not None and id(exc) not in seen:
        seen.add(id(exc))
        yield exc
        exc = exc.__cause__ or exc.__context__  # type: ignore[assignment]


def _hasher(algorithm: str) -> Any:
    return hashlib.new(algorithm, usedforsecurity=False) if algorithm == "md5" else hashlib.new(algorithm)


def file_digest(path: str | Path, algorithm: str = "sha256") -> str:
    """The hex digest of a file, read in chunks."""
    digest = _hasher(algorithm)
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(_CHUNK), b""):
            digest.update(chunk)
    return digest.hexdigest()


def download_verified(url: str, dest: str | Path, expected: str, algorithm: str = "sha256") -> Path:
    """Fetch ``url`` to ``dest`` if its ``algorithm`` digest is ``expected``; returns ``dest``.

    Raises:
        DigestMismatch: the data arrived but is not the published file (nothing is kept).
        OSError: the download failed (``urllib.error.URLError``, a timeout, a response cut short or malformed as
            ``ConnectionError``, a full disk; nothing is kept).
    """
    dest = Path(dest)
    created = missing_folders(dest.parent)
    dest.parent.mkdir(parents=True, exist_ok=True)
    clear_stale(dest.parent, f".{dest.name}.*.part")  # left by a killed download (3 GB for CIFAR-C)
    fd, tmp = tempfile.mkstemp(prefix=f".{dest.name}.", suffix=".part", dir=dest.parent)
    done = False
    try:
        digest = _hasher(algorithm)
        try:
            with os.fdopen(fd, "wb") as out, urllib.request.urlopen(url, timeout=TIMEOUT_S) as response:
                for chunk in iter(lambda: response.read(_CHUNK), b""):
                    digest.update(chunk)
                    out.write(chunk)
        except http.client.HTTPException as e:  # IncompleteRead, BadStatusLine: not OSErrors, unlike the rest
            raise ConnectionError(f"{url}: {type(e).__name__}: {first_line(e) or 'bad response'}") from e
        got = digest.hexdigest()
        if got != expected.lower():  # (hexdigest is lower case; a published digest may not be)
            raise DigestMismatch(f"{url}: {algorithm.upper()} {got}, expected {expected}")
        from .checkpoint import move_into_place

        move_into_place(tmp, dest)  # readable by others, and whole after a crash of the machine
        done = True
        return dest
    finally:
        Path(tmp).unlink(missing_ok=True)
        if not done:  # a failed download leaves no empty folder behind for a later run to take as the data's
            remove_folders_made(created)


def missing_folders(folder: Path) -> list[Path]:
    """``folder`` and those of its parents that do not exist yet, the deepest first (what a download makes)."""
    missing = []
    while not folder.exists() and folder != folder.parent:
        missing.append(folder)
        folder = folder.parent
    return missing


def remove_folders_made(created: list[Path]) -> None:
    """Remove the folders ``created`` (:func:`missing_folders`, before a download that failed) and those made
    under them, where they hold no file: one a file was written to, or another process has filled since, stays."""
    for folder in created:
        for here, _, _ in os.walk(folder, topdown=False):  # (the deepest first; none when it is gone)
            with contextlib.suppress(OSError):
                os.rmdir(here)
