"""Blend config → megatron-core GPT datasets → per-rank micro-batch loaders.

Datasets are megatron indexed datasets (``.bin``/``.idx``) blended by
``BlendedMegatronDatasetBuilder``. With an empty ``data.blend``, the bundled multilingual sample
(qwenpt/assets/sample, one prefix per language, natural weights) is tokenized into
``data.cache_dir`` on first use. megatron-core's index cache lives in ``data.cache_dir/index/<key>``, the
key telling the blend's files apart by content (:func:`content_key`), and every file of it is checked
before megatron-core loads it (:func:`verify_index_cache`).
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import itertools
import logging
import os
import re
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Any, Callable, Iterator, Optional

import numpy as np
import torch
import torch.distributed as dist
from megatron.core import parallel_state
from megatron.core.datasets.blended_megatron_dataset_builder import BlendedMegatronDatasetBuilder
from megatron.core.datasets.blended_megatron_dataset_config import (
    convert_split_vector_to_split_matrix, parse_and_normalize_split,
)
from megatron.core.datasets.gpt_dataset import GPTDataset, GPTDatasetConfig
from numpy.lib import format as npy

from data_pipeline.indexed import check_sizes, read_header
from data_pipeline.manifest import Manifest
from data_pipeline.prepare import PrepareConfig, output_lock, prepare
from data_pipeline.qwen import MODELS as QWEN_TOKENIZERS
from data_pipeline.tokenizer import TextTokenizer
from qwenpt.errors import ConfigError, check
from qwenpt.models import hybrid
from qwenpt.config import Config, DataConfig, ParallelConfig

log = logging.getLogger(__name__)

ASSETS = Path(str(resources.files("qwenpt") / "assets"))
SAMPLE_DIR = ASSETS / "sample"
BUNDLED_TOKENIZER = ASSETS / "tokenizer" / "tokenizer.json"
QWEN2_VOCAB = 151646  # ids of the qwen2 tokenizer; public Qwen models pad their embeddings beyond it


@dataclass(frozen=True)
class Blend:
    prefixes: list[str]
    weights: list[float]
    names: list[str]  # short name per prefix (language for the bundled sample), for per-source metrics


def load_tokenizer(data: DataConfig, model_vocab_size: int | None = None) -> TextTokenizer:
    """``data.tokenizer``: a Qwen name (qwen2, qwen2.5, qwen3, qwen3.5, qwen3.6; built offline on first use), a
    tokenizer.json or a directory; unset: qwen3.5 for a model with Qwen3.5's vocabulary (248,077 ids; 248,320
    rows), qwen2 for one with Qwen's (151,646 ids), else the bundled BPE."""
    vocab = model_vocab_size or 0
    name = data.tokenizer or ("qwen3.5" if vocab >= 248077 else "qwen2" if vocab >= QWEN2_VOCAB else BUNDLED_TOKENIZER)
    return TextTokenizer(name)


def prepare_sample(cache_dir: str | Path, tokenizer: TextTokenizer) -> Blend:
    """Tokenize the bundled sample with the data pipeline, once per tokenizer (rank 0 writes, everyone
    waits); one dataset per language, weighted by its tokens (the natural mixture)."""
    digest = hashlib.sha256(tokenizer.path.read_bytes()).hexdigest()[:12]
    out = Path(cache_dir).expanduser() / "sample" / digest
    config = PrepareConfig(
        inputs=(str(SAMPLE_DIR / "*.jsonl.gz"),), output=str(out), tokenizer=str(tokenizer.path), progress=False
    )
    if not dist.is_initialized() or dist.get_rank() == 0:
        manifest = prepare(config, wait=True)  # a no-op once done; another run preparing it is waited for
        log.info("bundled sample: %d documents, %d tokens in %s", manifest.total("documents"), manifest.total("tokens"), out)
    if dist.is_initialized():
        dist.barrier()
    groups = Manifest.read(out / "manifest.parquet").groups()
    return Blend(
        prefixes=[str(out / g["prefix"]) for g in groups.values()],
        weights=[float(g["tokens"]) for g in groups.values()],
        names=list(groups),
    )


def sample_languages() -> list[str]:
    return sorted(p.name.removesuffix(".jsonl.gz") for p in SAMPLE_DIR.glob("*.jsonl.gz"))


def resolve_blend(data: DataConfig, tokenizer: TextTokenizer) -> Blend:
    if not data.blend:
        blend = prepare_sample(data.cache_dir, tokenizer)
        if data.sample_weights:
            keep = [i for i, name in enumerate(blend.names) if name in data.sample_weights]
            blend = Blend(
                prefixes=[blend.prefixes[i] for i in keep],
                weights=[float(data.sample_weights[blend.names[i]]) for i in keep],
                names=[blend.names[i] for i in keep],
            )
        for name, prefix in zip(blend.names, blend.prefixes):  # known only once tokenized: checked here
            check_split_documents(f"the bundled sample's {name!r} dataset (data.blend is empty)", prefix,
                                  check_dataset(prefix), data.split)
        return blend
    prefixes = [str(Path(e.prefix).expanduser()) for e in data.blend]
    return Blend(
        prefixes=prefixes, weights=[float(e.weight) for e in data.blend], names=[Path(p).name for p in prefixes]
    )


def dataset_config(data: DataConfig, tokenizer: TextTokenizer, blend: Blend, seed: int) -> GPTDatasetConfig:
    return GPTDatasetConfig(
        random_seed=seed,
        sequence_length=data.seq_length,
        blend=(blend.prefixes, blend.weights),
        split=data.split,
        path_to_cache=str(Path(data.cache_dir).expanduser() / "index" / content_key(blend.prefixes)),
        tokenizer=tokenizer,
        # data.document_mask: positions restart after each EOD (qwenpt/packing.py turns them into document
        # boundaries; no dense mask is built) and the EOD's loss, whose label opens the next document, is masked
        reset_position_ids=data.document_mask,
        reset_attention_mask=False,
        eod_mask_loss=data.document_mask,
        create_attention_mask=False,
        mmap_bin_files=True,
    )


def build_datasets(config: GPTDatasetConfig, num_samples: list[int]) -> list[Optional[Any]]:
    """[train, valid, test] datasets with at least ``num_samples`` samples each (0: not built).

    megatron-core writes a missing index cache under its final names, and two runs sharing
    ``data.cache_dir`` that both find it missing would write it at once (one reading the other's half-written
    file). The builder of each job (global rank 0, which builds while the job's other ranks wait) therefore
    holds the cache folder's lock, and another job waits for it, then finds the index built. Holding it, the
    builder first checks every cache file megatron-core may load (:func:`verify_index_cache`); the other
    ranks read the cache only after megatron-core's barriers, i.e. after the builder's check."""
    for prefix in config.blend[0]:  # validate() checked data.blend already; this also covers every other caller
        check_split_documents("dataset", prefix, read_header(prefix)[1], config.split)
    builds = not dist.is_initialized() or dist.get_rank() == 0
    cache = Path(config.path_to_cache)
    if builds:
        cache.mkdir(parents=True, exist_ok=True)
    with output_lock(cache, ".build.lock", wait=True) if builds else contextlib.nullcontext():
        if builds:
            verify_index_cache(cache)
        return BlendedMegatronDatasetBuilder(GPTDataset, num_samples, lambda: True, config).build()


def file_identity(path: Path) -> str:
    """A file's path, size, mtime and inode: what tells a rewritten file from the old one on this machine without
    reading it (a file written anew gets a new inode even within one tick of a coarse file clock)."""
    path = path.expanduser().resolve()
    st = path.stat()
    return f"{path}|{st.st_size}|{st.st_mtime_ns}|{st.st_ino}"


def content_key(prefixes: list[str]) -> str:
    """The index cache's folder name, from what the index is built of: each dataset's ``.bin`` size and its
    ``.idx`` (document and sequence lengths; hashed whole up to 64 MiB, else its first and last MiB with its
    size). megatron-core keys its cache by path, split, seed and sizes only, so data re-prepared into the same
    prefix would reuse the old data's index (an IndexError, or silently a few of the new documents). Content,
    not file times or inodes: nodes that each hold a copy of the data agree on it."""
    digest = hashlib.sha256()
    for prefix in prefixes:
        idx = Path(f"{prefix}.idx").expanduser()
        size = idx.stat().st_size
        digest.update(f"{Path(f'{prefix}.bin').expanduser().stat().st_size}|{size}|".encode())
        with open(idx, "rb") as fh:
            if size <= 64 << 20:
                digest.update(fh.read())
            else:
                digest.update(fh.read(1 << 20))
                fh.seek(size - (1 << 20))
                digest.update(fh.read())
    return digest.hexdigest()[:16]


def verify_index_cache(cache: Path) -> None:
    """Check every ``.npy`` in the index cache folder before megatron-core loads it, which it does with
    ``numpy.load(allow_pickle=True)``: a pickle under an ``.npy`` name would run code. Nothing is unpickled
    here: the NPY magic and header are parsed by numpy.lib.format (a literal, not code). A file that is not
    NPY, or holds Python objects, is refused (ConfigError, left in place for the user to inspect). A file
    whose size differs from what its header describes (a build killed mid-write: megatron-core writes under
    the final names) is qwenpt's own damaged cache: removed with a warning, and megatron-core rebuilds it."""
    for path in sorted(cache.glob("*.npy")):
        problem = _npy_problem(path)
        if problem is None:
            continue
        damaged, reason = problem
        if not damaged:
            raise ConfigError(
                f"{path} in the dataset index cache is not a NumPy index file ({reason}); megatron-core would load it "
                "with pickle, which can run code, so it was not loaded. Delete it (it is rebuilt) and check who can "
                f"write to data.cache_dir ({cache.parent.parent})"
            )
        log.warning("dataset index cache file %s is damaged (%s), e.g. by a run killed while writing it: removed, "
                    "it is rebuilt", path, reason)
        path.unlink()


def _npy_problem(path: Path) -> Optional[tuple[bool, str]]:
    """None for a whole NPY file of plain numbers; else (damaged, reason): damaged is a truncated or
    overlong NPY file, not damaged a file that is no NPY file at all, or one holding Python objects."""
    size = path.stat().st_size
    with open(path, "rb") as f:
        magic = f.read(npy.MAGIC_LEN)
        if not magic.startswith(npy.MAGIC_PREFIX):
            if npy.MAGIC_PREFIX.startswith(magic):
                return True, f"{size} bytes, cut inside the NPY magic"
            return False, f"it starts with {magic[:4]!r}, not the NPY magic {npy.MAGIC_PREFIX!r}"
        version = tuple(magic[len(npy.MAGIC_PREFIX):])
        if version not in ((1, 0), (2, 0)):
            return (True, f"{size} bytes, cut inside the NPY magic") if len(magic) < npy.MAGIC_LEN else (
                False, f"NPY version {version} (numpy.save writes 1.0 or 2.0 for index arrays)")
        length = f.read(2 if version == (1, 0) else 4)
        header_end = f.tell() + int.from_bytes(length, "little")
        if len(length) < (2 if version == (1, 0) else 4) or size < header_end:
            return True, f"{size} bytes, cut inside its header"
        f.seek(npy.MAGIC_LEN)
        try:
            shape, _, dtype = (npy.read_array_header_1_0 if version == (1, 0) else npy.read_array_header_2_0)(f)
        except ValueError as err:
            return False, f"an unreadable NPY header: {err}"
        if dtype.hasobject:
            return False, f"dtype {dtype} holds Python objects, which numpy unpickles"
        need = f.tell() + int(np.prod(shape, dtype=np.int64)) * dtype.itemsize
    if size != need:
        return True, f"{size:,} bytes where its header ({dtype} {shape}) describes {need:,}"
    return None


SPLITS = ("train", "valid", "test")
_SPLIT_PART = re.compile(r"\s*(\d+(\.\d*)?|\.\d+)\s*")


def check_split(split: str, evaluates: bool) -> None:
    """``data.split`` in the one form megatron-core reads as written: it takes any runs of digits and dots
    (``abc`` is 0,0,0 and divides by zero; ``-5,1,0`` is 5,1,0; ``1e-3`` is 1,3) and pads missing parts."""
    form = ("three non-negative numbers TRAIN,VALID,TEST, each split's share of every dataset's documents "
            "(e.g. 95,5,0), with a positive train share")
    parts = str(split).split(",")
    if len(parts) != 3 or not all(_SPLIT_PART.fullmatch(p) for p in parts):
        raise ConfigError(f"data.split {split!r} is not {form}")
    train, valid, _ = (float(p) for p in parts)
    if train <= 0:
        raise ConfigError(f"data.split {split!r} gives training no documents; data.split must be {form}")
    if evaluates and valid <= 0:
        raise ConfigError(f"data.split {split!r} gives validation no documents, but the run evaluates "
                          f"(train.eval_steps > 0); data.split must be {form} and a positive valid share, e.g. 95,5,0")


def split_documents(documents: int, split: str) -> list[Optional[int]]:
    """Each split's document count out of ``documents``, exactly as megatron-core's builder cuts them (its
    split parsing, then ``int(round(bookend * n))``, as in 0.16 and 0.19); None: a split of share 0, not built."""
    matrix = convert_split_vector_to_split_matrix(parse_and_normalize_split(split))
    return [None if b is None else int(round(b[1] * float(documents))) - int(round(b[0] * float(documents)))
            for b in matrix]


def check_split_documents(where: str, prefix: str, documents: int, split: str) -> None:
    """Refuse a dataset that ``split`` leaves a built split no document of: megatron-core's index build
    would loop forever (it adds epochs of 0 tokens until the samples asked for are covered)."""
    for i, count in enumerate(split_documents(documents, split)):
        if count == 0:
            need = next(n for n in itertools.count(documents + 1) if split_documents(n, split)[i])
            raise ConfigError(
                f"{where}: {prefix} holds {documents} documents, of which data.split {split!r} gives the "
                f"{SPLITS[i]} split 0; the {SPLITS[i]} split needs at least {need} documents. Add data to it, or "
                f"change data.split (e.g. a larger {SPLITS[i]} share)"
            )


def check_dataset(prefix: str) -> int:
    """The document count of a megatron indexed dataset, after checking its files' sizes
    (data_pipeline.indexed.check_sizes) as a ConfigError naming the file."""
    try:
        return check_sizes(Path(prefix).expanduser())
    except (OSError, ValueError) as err:
        raise ConfigError(f"dataset {prefix}: {err}; rebuild it with `python -m data_pipeline prepare`") from None


MIN_HORIZON = 1 << 20  # samples: small data (the bundled sample: 505 at seq 256) still gets a long stream


def pass_samples(blend: Blend, seq_length: int) -> int:
    """Samples of ``seq_length`` tokens in one pass over every source of the blend (all splits)."""
    from megatron.core.datasets.indexed_dataset import IndexedDataset

    tokens = 0
    for prefix in blend.prefixes:
        dataset = IndexedDataset(prefix, mmap=True)  # kept alive while its memory-mapped lengths are read
        tokens += int(dataset.sequence_lengths.sum())
        del dataset
    return max(1, tokens // seq_length)


def sample_horizon(data: DataConfig, blend: Blend, needed: int, saved: Optional[int] = None) -> tuple[int, Optional[str]]:
    """How many samples the training index is built for, and a warning when it changes the order a resumed
    run reads.

    megatron-core's GPTDataset shuffles all the epochs it builds together, and the blend gives each source
    a share of the requested size, so the sample order is a function of the size requested. Requesting
    ``train.steps x global batch`` made it depend on the run's length (a 12-step and a 40-step run shared
    9 of their first 192 samples). The size is therefore a multiple of ``data.sample_horizon`` (default:
    one pass over the blend, at least :data:`MIN_HORIZON` samples, so the index is never larger than what
    megatron-core builds for a one-pass run, or than ~30 MB), the smallest that covers ``needed``; a
    resumed run keeps its checkpoint's (``saved``) while that still covers what it needs. Past it, the
    index grows and the order changes."""
    unit = data.sample_horizon or max(pass_samples(blend, data.seq_length), MIN_HORIZON)
    if saved is not None and saved >= needed:
        return saved, None
    horizon = unit * -(-needed // unit)
    if saved is None or saved == horizon:
        return horizon, None
    return horizon, (
        f"the training index grows from {saved:,} to {horizon:,} samples (train.steps x train.global_batch_size = "
        f"{needed:,} is past the checkpoint's): the data position is kept, but this run no longer sees the data an "
        f"uninterrupted run would. A data.sample_horizon of at least {needed:,} from the start keeps one order"
    )


def build_source_valid_sets(config: GPTDatasetConfig, blend: Blend, num_samples: int) -> dict[str, Any]:
    """Each source's validation split on its own (``num_samples`` each): the samples depend only on the
    source, the split and the seed, never on the blend weights, so losses compare across mixtures."""
    out = {}
    for name, prefix in zip(blend.names, blend.prefixes):
        single = dataclasses.replace(config, blend=([prefix], [1.0]), blend_per_split=None)
        out[name] = build_datasets(single, [0, num_samples, 0])[1]
    return out


_MAX_ID_CHUNK = 1 << 24  # tokens per read: 32-64 MiB, bounded memory on any corpus size


def max_token_id(prefix: str | Path, cache_dir: str | Path) -> int:
    """The largest token id in a megatron indexed dataset (``prefix.bin``/``.idx``), for checking it
    against the model's vocabulary before anything is built. Read once from the memory-mapped
    ``.bin`` in chunks (its dtype from megatron-core's ``IndexedDataset``), then cached in
    ``cache_dir/max_token_id`` keyed by the file's :func:`file_identity`."""
    from megatron.core.datasets.indexed_dataset import IndexedDataset

    bin_path = Path(f"{prefix}.bin").expanduser().resolve()
    key = hashlib.sha256(file_identity(bin_path).encode()).hexdigest()[:20]
    cache = Path(cache_dir).expanduser() / "max_token_id" / f"{key}.txt"
    if cache.is_file():
        return int(cache.read_text())
    dtype = IndexedDataset(str(bin_path.with_suffix("")), mmap=True).index.dtype
    tokens = np.memmap(bin_path, dtype=dtype, mode="r")
    top = -1
    for start in range(0, len(tokens), _MAX_ID_CHUNK):
        top = max(top, int(tokens[start:start + _MAX_ID_CHUNK].max()))
    del tokens
    cache.parent.mkdir(parents=True, exist_ok=True)
    tmp = cache.with_suffix(f".{os.getpid()}.tmp")
    tmp.write_text(str(top))
    os.replace(tmp, cache)
    return top


class PretrainingSampler:
    """Megatron-LM's pretraining order: global batches of consecutive samples, each DP rank taking
    its micro-batch slice; starting at ``consumed_samples`` makes resume exact."""

    def __init__(
        self, total_samples: int, consumed_samples: int, micro_batch_size: int, dp_rank: int, dp_size: int
    ) -> None:
        self.total, self.consumed = total_samples, consumed_samples
        self.mbs, self.dp_rank, self.dp_size = micro_batch_size, dp_rank, dp_size

    def __len__(self) -> int:
        return (self.total - self.consumed) // (self.mbs * self.dp_size)

    def __iter__(self) -> Iterator[list[int]]:
        step = self.mbs * self.dp_size
        for start in range(self.consumed, self.total - step + 1, step):
            first = start + self.dp_rank * self.mbs
            yield list(range(first, first + self.mbs))


def make_loader(dataset: Any, consumed_samples: int, micro_batch_size: int, num_workers: Optional[int],
                collate: Optional[Callable[[list], dict]] = None) -> Iterator[dict]:
    """This rank's micro-batches from ``consumed_samples`` on; ``collate`` adds per-micro-batch host work
    (:class:`qwenpt.packing.Collate`), done in the workers when ``num_workers`` > 0 (None: 2 on a GPU, 0 on
    the CPU). On a GPU the batches come in pinned memory, so the step's copies to the device do not block
    the host."""
    if num_workers is None:
        num_workers = 2 if torch.cuda.is_available() else 0
    sampler = PretrainingSampler(
        len(dataset),
        consumed_samples,
        micro_batch_size,
        parallel_state.get_data_parallel_rank(),
        parallel_state.get_data_parallel_world_size(),
    )
    loader = torch.utils.data.DataLoader(
        dataset, batch_sampler=sampler, num_workers=num_workers, persistent_workers=num_workers > 0,
        collate_fn=collate, pin_memory=torch.cuda.is_available(),
    )
    return iter(loader)


def validate_data(cfg: Config, check_files: bool = True) -> None:
    """The data section against the model and the layout, in the user's terms (``check_files=False``: not
    the datasets and the tokenizer on disk, as the planner runs away from the cluster's file systems)."""
    d, p, m, t = cfg.data, cfg.parallel, cfg.model, cfg.train
    check(d.seq_length > 0, f"data.seq_length must be a positive number of tokens, got {d.seq_length}")
    horizon = d.sample_horizon
    check(horizon is None or horizon > 0,
          f"data.sample_horizon must be a positive number of samples or null (one pass over the data), got {horizon}")
    check(
        d.seq_length <= m.max_position_embeddings,
        f"data.seq_length {d.seq_length} exceeds model.max_position_embeddings {m.max_position_embeddings}",
    )
    check(
        d.seq_length % (2 * p.context_parallel_size) == 0,
        f"data.seq_length {d.seq_length} is not divisible by 2 x parallel.context_parallel_size "
        f"{p.context_parallel_size} (context parallelism splits each sequence into 2 x CP chunks)",
    )
    _validate_document_mask(d, p)
    hybrid.validate_document_mask(m, d.document_mask, p)
    check(
        not (d.document_mask and m.dual_chunk_attention.chunk_size is not None),
        "model.dual_chunk_attention evaluates whole sequences (documents attending across boundaries); "
        "set data.document_mask=false with it",
    )
    if p.sequence_parallel:
        check(
            d.seq_length % p.tensor_model_parallel_size == 0,
            f"data.seq_length {d.seq_length} is not divisible by parallel.tensor_model_parallel_size "
            f"{p.tensor_model_parallel_size} (needed by sequence_parallel)",
        )
    check_split(d.split, evaluates=t.eval_steps > 0)
    for i, entry in enumerate(d.blend):
        for ext in (".bin", ".idx") if check_files else ():
            path = Path(f"{entry.prefix}{ext}").expanduser()
            check(
                path.is_file(),
                f"data.blend[{i}].prefix: {path} does not exist; build it with `python -m data_pipeline` "
                "or fix the path",
            )
        check(entry.weight > 0, f"data.blend[{i}].weight must be positive, got {entry.weight}")
        if check_files:
            check_split_documents(f"data.blend[{i}].prefix", entry.prefix, check_dataset(entry.prefix), d.split)
            top = max_token_id(entry.prefix, d.cache_dir)
            check(
                top < m.vocab_size,
                f"data.blend[{i}].prefix: {entry.prefix} holds token id {top}, but model.vocab_size is "
                f"{m.vocab_size}; it was tokenized with a larger vocabulary than this model's (re-tokenize "
                "it with the model's tokenizer, or pick the model it was made for)",
            )
    if d.sample_weights:
        check(not d.blend, "data.sample_weights applies to the bundled sample only; with data.blend, set the blend weights")
        langs = sample_languages()
        for lang, w in d.sample_weights.items():
            check(lang in langs, f"data.sample_weights: {lang!r} is not a language of the bundled sample ({', '.join(langs)})")
            check(w > 0, f"data.sample_weights.{lang} must be positive, got {w}; leave the language out instead")
    if d.tokenizer is not None and str(d.tokenizer).lower() not in QWEN_TOKENIZERS and check_files:
        tok = Path(d.tokenizer).expanduser()
        check(
            tok.is_file() or (tok / "tokenizer.json").is_file(),
            f"data.tokenizer: {tok} is neither a tokenizer.json nor a directory holding one, nor one of "
            f"{', '.join(QWEN_TOKENIZERS)}",
        )


def _validate_document_mask(d: DataConfig, p: ParallelConfig) -> None:
    if d.reset_position_ids is not None:
        check(
            d.reset_position_ids == d.document_mask,
            f"data.reset_position_ids={d.reset_position_ids} with data.document_mask={d.document_mask} is not supported: "
            "megatron-core's packed-sequence RoPE restarts positions exactly where documents are masked, and without "
            "it RoPE positions are the sequence index; leave data.reset_position_ids unset (null)",
        )
    if not d.document_mask:
        return
    check(
        p.context_parallel_size == 1 or p.expert_model_parallel_size == 1 or p.moe_token_dispatcher_type != "allgather",
        f"data.document_mask with parallel.context_parallel_size {p.context_parallel_size} and expert_model_parallel_size "
        f"{p.expert_model_parallel_size} needs parallel.moe_token_dispatcher_type=alltoall: under CP each document is "
        "padded to a multiple of 2 x CP tokens, so expert-parallel ranks hold different token counts, which the "
        "allgather dispatcher cannot gather (or set data.document_mask=false)",
    )
