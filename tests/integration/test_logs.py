"""What a run's console and train.log show (issue 27): every console line is in train.log, no progress-bar
carriage returns where the output is not a terminal, and none of megatron-core's chatter."""

from __future__ import annotations


from conftest import run_train

LINES = ("step      0/4 | validation loss", "step      2/4 | loss", "step      4/4 | loss",
         "step      4/4 | validation loss")
NOISE = ("cuda_graph_scope", "cuda_graph_modules", "full scope is deprecated", "IndexReader", "\r")


def test_train_log_holds_the_step_lines_and_no_noise(tmp_path):
    """A user dataset (validate reads its index, which megatron-core logged at INFO), the progress bar asked
    for but stdout a pipe: the step and validation lines show once on the console and are in train.log."""
    from data_pipeline.prepare import PrepareConfig, prepare
    from qwenpt.data import BUNDLED_TOKENIZER, SAMPLE_DIR

    prepare(PrepareConfig(inputs=(str(SAMPLE_DIR / "de.jsonl.gz"),), output=str(tmp_path / "tok"),
                          tokenizer=str(BUNDLED_TOKENIZER), progress=False))
    run = tmp_path / "run"
    proc = run_train(run, "train.steps=4", "optim.warmup_steps=1", "train.eval_interval=4", "train.eval_steps=1",
                     "checkpoint.save_interval=4", "logging.log_interval=2", "logging.progress=true",
                     f"data.blend=[{{prefix:{tmp_path / 'tok' / 'de'},weight:1.0}}]")
    assert proc.returncode == 0, proc.stdout[-3000:]
    log = (run / "train.log").read_text(encoding="utf-8")
    for line in LINES:
        assert proc.stdout.count(line) == 1, (line, proc.stdout[-3000:])
        assert log.count(line) == 1, (line, log[-3000:])
    for noise in NOISE:
        assert noise not in proc.stdout, (noise, proc.stdout[-3000:])
        assert noise not in log, (noise, log[-3000:])
