"""What a run's console and train.log show (issue 27): every console line is in train.log, no progress-bar
carriage returns where the output is not a terminal, and none of megatron-core's chatter."""

from __future__ import annotations

import logging
import warnings


def test_only_megatrons_default_scope_warning_is_ignored(monkeypatch):
    """The filter names one message from one module: the same text elsewhere, and other warnings, still show."""
    from qwenpt.logs import configure_training_logs

    monkeypatch.setattr(logging, "captureWarnings", lambda capture: None)  # keep them where pytest records them
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        configure_training_logs()
        exec(compile('import warnings\nwarnings.warn("full scope is deprecated. Use empty cuda_graph_scope")',
                     "transformer_config.py", "exec"), {"__name__": "megatron.core.transformer.transformer_config"})
        exec(compile('import warnings\nwarnings.warn("full scope is deprecated, elsewhere")', "other.py", "exec"),
             {"__name__": "somewhere.else"})
        exec(compile('import warnings\nwarnings.warn("a warning that matters")', "transformer_config.py", "exec"),
             {"__name__": "megatron.core.transformer.transformer_config"})
    assert [str(w.message) for w in caught] == ["full scope is deprecated, elsewhere", "a warning that matters"]
