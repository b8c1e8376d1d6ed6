"""End-to-end runs of train.py on CPU: loss falls, MoE trains, a killed run resumes exactly."""

from __future__ import annotations


def test_interrupted_save_never_shadows_the_last_checkpoint(tmp_path):
    """A crash mid-save leaves a .tmp_ directory; resume ignores it and takes the last complete one."""
    from qwenpt.checkpoint import complete_checkpoints, find_resumable

    root = tmp_path / "checkpoints"
    good = root / "step_00000008"
    good.mkdir(parents=True)
    (good / "metadata.json").write_text("{}")
    (good / "common.pt").write_bytes(b"")
    (root / "latest").write_text("step_00000008\n")
    partial = root / ".tmp_step_00000016"
    partial.mkdir()
    (partial / "metadata.json").write_text("{}")
    assert find_resumable(root) == (good, [])
    assert complete_checkpoints(root) == [good]
    (root / "latest").unlink()  # even without the pointer file
    assert find_resumable(root) == (good, [])
