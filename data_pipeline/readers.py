"""Stream records out of JSONL, Parquet and plain-text files (each optionally ``.gz``/``.zst``).

Reading is streaming: memory is bounded by one line, one paragraph or one Parquet record batch,
whatever the file size. A bad record (invalid UTF-8, malformed JSON, a missing or non-string text
field, an empty document) and a damaged file (truncated or corrupt compression, unreadable) are
counted in :class:`Rejects` with file, line and a sample, and reading goes on with the next record
or file: every good record before the damage is kept.
"""

from __future__ import annotations

import codecs
import glob
import gzip
import io
import itertools
import json
import os
import shutil
import tempfile
import zlib
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any, Iterator, Sequence

try:
    import orjson
except ImportError:  # optional speed-up
    orjson = None

FORMATS = ("jsonl", "parquet", "text")
TEXT_UNITS = ("paragraph", "line", "file")  # what one document is in a plain-text file
SAMPLE_CHARS = 200  # characters of a rejected record kept in the rejects log


@dataclass
class Record:
    text: str
    lang: str | None  # from the record's language field, when it has one
    source: str  # the record's source field, else the input file's name without extensions
    file: str
    line: int  # first line of the record (Parquet: row number, from 1)
    utf8: bytes = b""  # the text in UTF-8 once cleaned (set by the cleaner)


@dataclass
class Rejects:
    """Counts of dropped records by reason, with a capped log of (file, line, reason, sample)."""

    counts: Counter = field(default_factory=Counter)  # (lang, source, reason) -> count
    log: list = field(default_factory=list)  # dicts for rejects.jsonl
    log_limit: int = 1000  # log entries kept per (file, reason); all are counted
    _logged: Counter = field(default_factory=Counter)

    def add(self, reason: str, file: str, line: int, sample: object, lang: str = "", source: str = "") -> None:
        self.counts[(lang, source, reason)] += 1
        if self._logged[(file, reason)] < self.log_limit:
            self._logged[(file, reason)] += 1
            self.log.append({"file": file, "line": line, "reason": reason, "sample": sample_text(sample)})

    def by_reason(self) -> Counter:
        out: Counter = Counter()
        for (_, _, reason), n in self.counts.items():
            out[reason] += n
        return out

    @property
    def total(self) -> int:
        return sum(self.counts.values())


class Drops(list):
    """Rejects of one task in a worker process, in order, as the arguments of :meth:`Rejects.add`
    (samples already cut): the parent adds them to its :class:`Rejects`, so counts and the capped
    log are what one process reading everything would have."""

    def add(self, reason: str, file: str, line: int, sample: object, lang: str = "", source: str = "") -> None:
        self.append((reason, file, line, sample_text(sample), lang, source))


def sample_text(sample: object) -> str:
    """What the rejects log keeps of a record: its first :data:`SAMPLE_CHARS` characters."""
    if isinstance(sample, bytes):
        sample = sample[: SAMPLE_CHARS * 4].decode("utf-8", errors="backslashreplace")
    return str(sample)[:SAMPLE_CHARS]


def _loads(raw: bytes) -> object:
    """One JSON line: orjson (~2.5x faster), or the standard library, which also tells invalid UTF-8
    from malformed JSON, accepts what orjson rejects (lone surrogate escapes) and is used when
    orjson is absent."""
    if orjson is not None:
        try:
            return orjson.loads(raw)
        except orjson.JSONDecodeError:
            pass
    return json.loads(raw.decode("utf-8"))


def expand_inputs(inputs: Sequence[str | os.PathLike]) -> list[Path]:
    """Files, directories (searched recursively) and globs → sorted unique files; a path that
    matches nothing fails now, before any work, naming it."""
    files: list[Path] = []
    for item in inputs:
        s = os.path.expanduser(str(item))
        if glob.has_magic(s):
            matches = [Path(p) for p in sorted(glob.glob(s, recursive=True)) if Path(p).is_file()]
            if not matches:
                raise FileNotFoundError(f"input glob {s!r} matches no file")
            files.extend(matches)
        elif Path(s).is_dir():
            matches = sorted(p for p in Path(s).rglob("*") if p.is_file() and not p.name.startswith(".") and _known(p))
            if not matches:
                raise FileNotFoundError(f"input directory {s} holds no .jsonl/.json/.parquet/.txt file (optionally .gz/.zst)")
            files.extend(matches)
        elif Path(s).exists():  # a file, or a pipe such as <(zstdcat big.zst) with --format
            files.append(Path(s))
        else:
            raise FileNotFoundError(f"input path {s} does not exist; pass files, directories or globs of JSONL, Parquet or text")
    seen: set[Path] = set()
    unique = []
    for f in files:
        key = f.resolve()
        if key not in seen:
            seen.add(key)
            unique.append(f)
    return unique


def _known(path: Path) -> bool:
    """Whether a file found in a directory has a record format's extension (others, e.g. a README or
    COPYRIGHT beside the data, are not read unless named explicitly)."""
    try:
        return Path(path.name).suffix != "" and file_format(path) in FORMATS
    except ValueError:
        return False


def compression(path: Path) -> str | None:
    return {".gz": "gzip", ".zst": "zstd"}.get(path.suffix)


def file_format(path: Path, override: str | None = None) -> str:
    """The record format from ``override`` or the extension (compression suffix ignored)."""
    if override:
        return override
    name = path.name[: -len(path.suffix)] if compression(path) else path.name
    ext = Path(name).suffix.lower()
    if ext in (".jsonl", ".json", ".ndjson"):
        return "jsonl"
    if ext == ".parquet":
        return "parquet"
    if ext in (".txt", ".text", ""):
        return "text"
    raise ValueError(f"{path}: cannot tell the format from extension {ext!r}; pass --format {{{','.join(FORMATS)}}}")


def source_name(path: Path) -> str:
    """The file name without compression and format extensions: ``web/en-00.jsonl.gz`` → ``en-00``."""
    name = path.name
    for _ in range(2):
        if Path(name).suffix.lower() in (".gz", ".zst", ".jsonl", ".json", ".ndjson", ".parquet", ".txt", ".text"):
            name = name[: -len(Path(name).suffix)]
    return name


def _open_binary(path: Path) -> IO[bytes]:
    kind = compression(path)
    if kind == "gzip":
        return gzip.open(path, "rb")
    if kind == "zstd":
        return io.BufferedReader(_ZstdReader(open(path, "rb")), 1 << 16)
    return open(path, "rb", buffering=1 << 20)  # lines of several KB: fewer refills that split one


class _ZstdReader(io.RawIOBase):
    """Streaming zstd decompression across frames that, unlike ``zstandard``'s stream reader, raises
    ``EOFError`` when the input ends inside a frame (a truncated file is reported, not silently cut)."""

    def __init__(self, raw: IO[bytes], chunk: int = 1 << 20) -> None:
        import zstandard

        self.raw, self.chunk, self._new = raw, chunk, zstandard.ZstdDecompressor().decompressobj
        self.dobj, self.pending, self.pos, self.in_frame = self._new(), b"", 0, False

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: memoryview) -> int:  # type: ignore[override]
        while self.pos == len(self.pending):
            self.pending, self.pos = b"", 0
            data = self.raw.read(self.chunk)
            if not data:
                if self.in_frame:
                    raise EOFError("zstd stream ended inside a frame (truncated file)")
                return 0
            while data:
                self.in_frame = True
                self.pending += self.dobj.decompress(data)
                data = b""
                if self.dobj.eof:  # frame complete; what follows is the next frame
                    data, self.dobj, self.in_frame = self.dobj.unused_data, self._new(), False
        n = min(len(buffer), len(self.pending) - self.pos)
        buffer[:n] = self.pending[self.pos : self.pos + n]
        self.pos += n
        return n

    def close(self) -> None:
        self.raw.close()
        super().close()


def _damage_errors() -> tuple[type[BaseException], ...]:
    errors: list[type[BaseException]] = [EOFError, gzip.BadGzipFile, zlib.error, OSError]
    try:
        import zstandard

        errors.append(zstandard.ZstdError)
    except ImportError:
        pass
    return tuple(errors)


class Reader:
    """Reads one file's records with the field names and text unit the user chose."""

    def __init__(
        self,
        text_field: str = "text",
        lang_field: str | None = "lang",
        source_field: str | None = "source",
        text_unit: str = "paragraph",
        fmt: str | None = None,
        parquet_batch_rows: int = 1024,
    ) -> None:
        if text_unit not in TEXT_UNITS:
            raise ValueError(f"text unit {text_unit!r} is not one of {TEXT_UNITS}")
        if fmt is not None and fmt not in FORMATS:
            raise ValueError(f"format {fmt!r} is not one of {FORMATS}")
        self.text_field, self.lang_field, self.source_field = text_field, lang_field, source_field
        self.text_unit, self.fmt, self.parquet_batch_rows = text_unit, fmt, parquet_batch_rows

    def read(self, path: Path, rejects: Rejects) -> Iterator[Record]:
        """Yield the good records of ``path``; count the rest (and any damage) in ``rejects``."""
        for line, raw in self.units(path, rejects):
            yield from self.parse(path, [(line, raw)], rejects)

    def units(self, path: Path, rejects: Rejects | Drops) -> Iterator[tuple[int, Any]]:
        """The raw records of ``path`` with their first line (Parquet: row): JSONL lines and
        plain-text documents as bytes, Parquet rows as dicts. Cheap framing only (decompression,
        line breaks), so one process can feed many that :meth:`parse` them; damage to the file is
        counted here, after every unit before it."""
        fmt = file_format(path, self.fmt)
        frame = {"jsonl": self._jsonl_lines, "parquet": self._parquet_rows, "text": self._text_docs}[fmt]
        position = [0]  # last line reached, for the damage report
        try:
            yield from frame(path, position)
        except _damage_errors() as err:
            reason = "unreadable_file" if isinstance(err, PermissionError) else "truncated_or_corrupt_file"
            rejects.add(reason, str(path), position[0] + 1, f"{type(err).__name__}: {err}", source=source_name(path))

    def field_names(self, path: Path, limit: int = 100) -> dict[str, int]:
        """The fields of the first ``limit`` JSONL records of ``path``, in order of appearance, each with the
        characters of text its values hold: what to offer as ``--text-field`` when no record has the one
        asked for (Parquet names its columns when the column is missing; plain text has no fields)."""
        seen: dict[str, int] = {}
        if file_format(path, self.fmt) != "jsonl":
            return seen
        units = self.units(path, Drops())
        try:
            for _, raw in itertools.islice(units, limit):
                try:
                    fields = _loads(raw)
                except ValueError:  # invalid UTF-8 or JSON: counted by parse, not a field
                    continue
                for name, value in fields.items() if isinstance(fields, dict) else ():
                    seen[name] = seen.get(name, 0) + (len(value) if isinstance(value, str) else 0)
        finally:
            units.close()
        return seen

    def parse(self, path: Path, units: Sequence[tuple[int, Any]], rejects: Rejects | Drops) -> Iterator[Record]:
        """The good records among ``units`` of ``path`` (from :meth:`units`); the rest counted in ``rejects``."""
        file, default_source = str(path), source_name(path)
        if file_format(path, self.fmt) == "text":
            for line, raw in units:
                if (record := _text_record(raw, line, file, default_source, rejects)) is not None:
                    yield record
            return
        for line, raw in units:
            fields = raw
            if not isinstance(raw, dict):  # a JSONL line
                try:
                    fields = _loads(raw)
                except UnicodeDecodeError:
                    rejects.add("invalid_utf8", file, line, raw, source=default_source)
                    continue
                except json.JSONDecodeError:
                    reason = "truncated_or_corrupt_file" if not raw.endswith(b"\n") else "malformed_json"
                    rejects.add(reason, file, line, raw, source=default_source)
                    continue
                if not isinstance(fields, dict):
                    rejects.add("malformed_json", file, line, raw, source=default_source)
                    continue
            if (record := self._from_fields(fields, file, line, default_source, rejects, raw)) is not None:
                yield record

    def _from_fields(
        self, record: dict, file: str, lineno: int, default_source: str, rejects: Rejects | Drops, raw: object
    ) -> Record | None:
        lang = record.get(self.lang_field) if self.lang_field else None
        lang = lang if isinstance(lang, str) and lang.strip() else None
        source = record.get(self.source_field) if self.source_field else None
        source = source if isinstance(source, str) and source.strip() else default_source
        text = record.get(self.text_field)
        if not isinstance(text, str):
            rejects.add("missing_text_field", file, lineno, raw, lang=lang or "", source=source)
            return None
        return Record(text=text, lang=lang, source=source, file=file, line=lineno)

    @staticmethod
    def _jsonl_lines(path: Path, position: list[int]) -> Iterator[tuple[int, bytes]]:
        with _open_binary(path) as f:
            for lineno, raw in enumerate(f, start=1):
                position[0] = lineno
                if lineno == 1 and raw.startswith(codecs.BOM_UTF8):
                    raw = raw[len(codecs.BOM_UTF8) :]  # a byte-order mark is not part of the first record
                if not raw.isspace():  # blank separator lines are not records
                    yield lineno, raw

    def _parquet_rows(self, path: Path, position: list[int]) -> Iterator[tuple[int, dict]]:
        import pyarrow.parquet as pq

        with _seekable(path) as local:
            pf = pq.ParquetFile(local)
            names = set(pf.schema_arrow.names)
            if self.text_field not in names:
                raise ValueError(f"{path}: no column {self.text_field!r} (columns: {sorted(names)}); pass --text-field")
            columns = [c for c in (self.text_field, self.lang_field, self.source_field) if c and c in names]
            row = 0
            for batch in pf.iter_batches(batch_size=self.parquet_batch_rows, columns=columns):
                for record in batch.to_pylist():
                    row += 1
                    position[0] = row
                    yield row, record

    def _text_docs(self, path: Path, position: list[int]) -> Iterator[tuple[int, bytes]]:
        with _open_binary(path) as f:
            start, chunk = 1, []
            for lineno, raw in enumerate(f, start=1):
                position[0] = lineno
                if lineno == 1 and raw.startswith(codecs.BOM_UTF8):
                    raw = raw[len(codecs.BOM_UTF8) :]
                if self.text_unit == "line":
                    yield lineno, raw
                elif self.text_unit == "paragraph" and not raw.strip():
                    if chunk:
                        yield start, b"".join(chunk)
                    start, chunk = lineno + 1, []
                else:
                    chunk.append(raw)
            if chunk:
                yield start, b"".join(chunk)

def _text_record(raw: bytes, lineno: int, file: str, source: str, rejects: Rejects | Drops) -> Record | None:
    if not raw.strip():
        return None
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError:
        rejects.add("invalid_utf8", file, lineno, raw, source=source)
        return None
    return Record(text=text.strip("\n"), lang=None, source=source, file=file, line=lineno)


class _seekable:
    """A Parquet file as pyarrow needs it (seekable): the file itself, or a compressed one
    decompressed to a temporary file (disk, not memory)."""

    def __init__(self, path: Path) -> None:
        self.path, self.tmp = path, None

    def __enter__(self) -> str:
        if compression(self.path) is None:
            return str(self.path)
        fd, self.tmp = tempfile.mkstemp(suffix=".parquet")
        with os.fdopen(fd, "wb") as out, _open_binary(self.path) as src:
            shutil.copyfileobj(src, out, 1 << 20)
        return self.tmp

    def __exit__(self, *exc: object) -> None:
        if self.tmp:
            os.unlink(self.tmp)
