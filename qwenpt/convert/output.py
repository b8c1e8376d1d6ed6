"""The folder a conversion writes (``--out``), made so that nothing qwenpt did not write is destroyed.

A non-empty ``--out`` is refused unless it is an earlier qwenpt output of the same kind and
``overwrite`` is given; ``--out`` may not be, hold or lie inside what the conversion reads. The new
output is written into a temporary sibling folder, marked with ``qwenpt_output.json`` (written
last: a folder without it is not a finished qwenpt output) and swapped in whole: the old output is
renamed aside, the new one renamed into place, then the old one deleted. An error or a crash
before the swap leaves ``--out`` as it was; no file of the old output survives beside the new one.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator, Optional

import yaml

from qwenpt.errors import ConfigError

MARKER = "qwenpt_output.json"
KINDS = {"hf_import": "import", "hf_export": "export"}  # kind -> the convert command that writes it


def output_kind(path: str | Path) -> Optional[str]:
    """The kind of qwenpt output ``path`` is, from its marker; a checkpoint imported before markers
    existed (its run_config.yaml records the conversion) is an ``hf_import``. None: not a qwenpt output."""
    path = Path(path)
    try:
        if (path / MARKER).is_file():
            kind = json.loads((path / MARKER).read_text()).get("kind")
            return kind if kind in KINDS else None
        if (path / "metadata.json").is_file() and (path / "run_config.yaml").is_file():
            fields = yaml.safe_load((path / "run_config.yaml").read_text())
            return "hf_import" if isinstance(fields, dict) and "convert" in fields else None
    except (OSError, ValueError, AttributeError, yaml.YAMLError):  # unreadable or malformed: not ours
        return None
    return None


def check_output(out: str | Path, kind: str, inputs: dict[str, str | Path], overwrite: bool) -> None:
    """Refuse (ConfigError) an ``out`` this conversion may not write; ``inputs``: flag -> path it reads."""
    out = Path(out)
    real = out.resolve()
    for flag, path in inputs.items():
        src = Path(path).resolve()
        if real == src or src in real.parents or real in src.parents:
            where = "is" if real == src else "is inside" if src in real.parents else "contains"
            raise ConfigError(f"--out {out} {where} {flag} {path}, which this conversion reads: "
                              f"choose an --out outside {path} (nothing was written)")
    if not out.exists():
        return
    if not out.is_dir():
        raise ConfigError(f"--out {out} is a file, not a folder: choose another --out (nothing was written)")
    if not any(out.iterdir()):
        return
    found = output_kind(out)
    if found != kind:
        what = f"a qwenpt {KINDS[found]}" if found else "not written by qwenpt"
        raise ConfigError(f"--out {out} is not empty and is {what}: it is left as it is; choose a new or empty "
                          f"--out (only an earlier output of `convert {KINDS[kind]}` is replaced, with --overwrite)")
    if not overwrite:
        raise ConfigError(f"--out {out} holds an earlier qwenpt {KINDS[kind]}: add --overwrite to replace it, "
                          "or choose a new or empty --out (nothing was written)")


def _follow_umask(folder: Path) -> None:
    """tempfile makes the folder 0700 and safetensors writes 0600: give every folder and file the
    mode a plain mkdir/open gives (0755/0644 under umask 022)."""
    umask = os.umask(0)
    os.umask(umask)
    os.chmod(folder, 0o777 & ~umask)
    for root, dirs, files in os.walk(folder):
        for d in dirs:
            os.chmod(os.path.join(root, d), 0o777 & ~umask)
        for f in files:
            os.chmod(os.path.join(root, f), 0o666 & ~umask)


@contextmanager
def replacing(out: str | Path, kind: str, *, inputs: dict[str, str | Path], overwrite: bool,
              record: dict) -> Iterator[Path]:
    """Check ``out`` (:func:`check_output`), yield a new temporary sibling folder to write the output
    into and, once the block ends without error, mark it (``record`` goes into the marker) and swap
    it in for ``out``. On an error the temporary folder is removed and ``out`` left as it was."""
    check_output(out, kind, inputs, overwrite)
    final = Path(out).resolve()  # through a symlink: the folder it names is replaced, the link kept
    final.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{final.name}.qwenpt-", dir=final.parent))
    aside = tmp.with_name(f"{tmp.name}-old")
    try:
        yield tmp
        check_output(out, kind, inputs, overwrite)  # again: another process may have written there meanwhile
        (tmp / MARKER).write_text(json.dumps({"kind": kind, **record}, indent=2) + "\n")
        _follow_umask(tmp)
        if final.exists():
            os.rename(final, aside)
        try:
            os.rename(tmp, final)
        except BaseException:
            if aside.exists():
                os.rename(aside, final)
            raise
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    shutil.rmtree(aside, ignore_errors=True)
