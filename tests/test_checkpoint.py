"""Run files are replaced whole or not at all."""

import pytest

from vprompt.checkpoint import atomic_write


def test_a_write_that_fails_leaves_the_old_file_and_no_temporary_one(tmp_path):
    path = tmp_path / "results.json"
    path.write_text("old")

    def partial(tmp):
        with open(tmp, "w") as f:
            f.write("new, cut sh")
        raise KeyboardInterrupt  # as Ctrl-C in the middle of a write

    with pytest.raises(KeyboardInterrupt):
        atomic_write(path, partial)
    assert path.read_text() == "old" and [p.name for p in tmp_path.iterdir()] == ["results.json"]
    atomic_write(path, lambda tmp: open(tmp, "w").write("new"))
    assert path.read_text() == "new" and [p.name for p in tmp_path.iterdir()] == ["results.json"]


def test_the_new_bytes_reach_the_disk_before_the_rename_and_the_rename_after(tmp_path, monkeypatch):
    import os

    from vprompt import checkpoint

    calls = []
    real_fsync, real_replace = os.fsync, os.replace
    monkeypatch.setattr(
        checkpoint.os, "fsync", lambda fd: calls.append(("fsync", os.readlink(f"/proc/self/fd/{fd}"))) or real_fsync(fd)
    )
    monkeypatch.setattr(checkpoint.os, "replace", lambda a, b: calls.append(("replace", str(b))) or real_replace(a, b))
    path = tmp_path / "last.pt"
    atomic_write(path, lambda tmp: open(tmp, "w").write("state"))
    assert [c[0] for c in calls] == ["fsync", "replace", "fsync"]
    assert calls[0][1].startswith(str(tmp_path / ".last.pt.")) and calls[2][1] == str(tmp_path)
    assert path.read_text() == "state"


def test_a_prompt_whose_metadata_was_damaged_is_named(tmp_path):
    import re

    import torch
    from safetensors.torch import save_file

    from vprompt.checkpoint import load_prompt, save_prompt

    path = tmp_path / "prompt.safetensors"
    save_prompt(path, {"prompter.prompt": torch.zeros(3)}, {"lr": 1.0}, epoch=2)
    assert load_prompt(path)[1:] == ({"lr": 1.0}, {"epoch": 2})
    for config, why in (('{"lr": 1.0', "its metadata is not valid JSON"), ("[1, 2]", "its config metadata is a list")):
        save_file({"prompter.prompt": torch.zeros(3)}, str(path), {"format": "vprompt-prompt/1", "config": config})
        with pytest.raises(ValueError, match=re.escape(f"{path}: {why}")):
            load_prompt(path)
    save_prompt(path, {"prompter.prompt": torch.zeros(3)}, {"lr": 1.0}, classnames=5)  # as if edited by hand
    with pytest.raises(ValueError, match=re.escape(f"{path}: its classnames metadata is not a list of names")):
        load_prompt(path)


def test_a_run_records_the_commit_of_its_own_source_tree_only(tmp_path):
    import shutil
    import subprocess

    from vprompt.runs import _source

    if shutil.which("git") is None:
        pytest.skip("git is not installed")

    def git(*args):
        subprocess.run(["git", "-c", "user.name=t", "-c", "user.email=t@t", *args], cwd=tmp_path, check=True,
                       capture_output=True)  # fmt: skip

    git("init", "-q")
    (tmp_path / "tracked").mkdir()
    (tmp_path / "tracked" / "__init__.py").write_text("")
    (tmp_path / "venv" / "vprompt").mkdir(parents=True)  # installed into a folder of someone else's repository
    (tmp_path / "venv" / "vprompt" / "__init__.py").write_text("")
    git("add", "tracked")
    git("commit", "-q", "-m", "x")
    head = subprocess.run(["git", "rev-parse", "HEAD"], cwd=tmp_path, capture_output=True, text=True).stdout.strip()
    assert _source(tmp_path / "tracked") == {"git_sha": head, "git_dirty": False}
    assert _source(tmp_path / "venv" / "vprompt") == {"git_sha": None, "git_dirty": None}  # not that repository's
    (tmp_path / "tracked" / "__init__.py").write_text("x = 1")
    assert _source(tmp_path / "tracked") == {"git_sha": head, "git_dirty": True}


def test_run_files_get_the_usual_permissions_not_the_temporary_files_private_ones(tmp_path):
    from vprompt.checkpoint import current_umask

    atomic_write(tmp_path / "results.json", lambda tmp: open(tmp, "w").write("{}"))
    assert (tmp_path / "results.json").stat().st_mode & 0o777 == 0o666 & ~current_umask()


def test_only_the_temporary_files_of_unfinished_writes_are_removed(tmp_path):
    from vprompt.checkpoint import remove_unfinished_writes

    def failed(tmp):
        raise OSError("disk full")

    kept = [".gitignore", ".notes.txt", "last.pt"]  # a user's own dotfiles are not leftovers
    for name in kept:
        (tmp_path / name).write_text("x")
    with pytest.raises(OSError):
        atomic_write(tmp_path / "last.pt", failed)
    (tmp_path / ".last.pt.ab_cd123").write_text("cut sh")  # as a process killed while writing leaves it
    remove_unfinished_writes(tmp_path)
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(kept)


@pytest.mark.parametrize("epoch", [-1, True])
def test_a_training_state_whose_epoch_is_not_a_count_is_damaged(tmp_path, epoch):
    import torch

    from vprompt.checkpoint import load_state, save_state

    state = {"format": "vprompt-last/1", "epoch": 2, "best": {}, "model": {}, "optimizers": [], "schedulers": []}
    save_state(tmp_path / "last.pt", {**state, "config": {}})
    assert load_state(tmp_path / "last.pt")["epoch"] == 2
    torch.save({**state, "config": {}, "epoch": epoch}, tmp_path / "last.pt")
    with pytest.raises(ValueError, match=r"damaged vprompt training state \(entries epoch \(\w+\)\)"):
        load_state(tmp_path / "last.pt")


def test_a_safetensors_file_of_another_format_is_no_prompt(tmp_path):
    import torch
    from safetensors.torch import save_file

    from vprompt.checkpoint import load_prompt

    path = tmp_path / "probe.safetensors"  # a linear probe's file also holds a config
    save_file({"weight": torch.zeros(2, 2)}, str(path), {"format": "vprompt-probe/1", "config": "{}"})
    with pytest.raises(ValueError, match="is a safetensors file but not a vprompt prompt"):
        load_prompt(path)
