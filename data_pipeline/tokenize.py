"""Tokenize documents into megatron indexed datasets, one ``<|endoftext|>`` after each document."""

from __future__ import annotations

from pathlib import Path
from typing import Iterable, Iterator

from data_pipeline.indexed import write_indexed_dataset
from data_pipeline.readers import ReadStats, read_jsonl
from data_pipeline.tokenizer import TextTokenizer


def _batched(texts: Iterable[str], size: int) -> Iterator[list[str]]:
    batch: list[str] = []
    for text in texts:
        batch.append(text)
        if len(batch) == size:
            yield batch
            batch = []
    if batch:
        yield batch


def tokenize_documents(texts: Iterable[str], tokenizer: TextTokenizer, batch_size: int = 256) -> Iterator[list[int]]:
    for batch in _batched(texts, batch_size):
        for ids in tokenizer.encode_batch(batch):
            ids.append(tokenizer.eod)
            yield ids


def tokenize_jsonl(
    files: Iterable[str | Path], tokenizer: TextTokenizer, out_prefix: str | Path, text_field: str = "text"
) -> tuple[int, int, ReadStats]:
    """All documents of ``files`` into ``out_prefix.bin/.idx``; returns (documents, tokens, read stats)."""
    stats = ReadStats()
    texts = (text for f in files for text in read_jsonl(f, text_field, stats))
    docs, tokens = write_indexed_dataset(out_prefix, tokenize_documents(texts, tokenizer), tokenizer.vocab_size)
    return docs, tokens, stats
