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
