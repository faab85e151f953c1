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
