"""Saving weights as a Hugging Face folder, streamed tensor by tensor into shards."""

from __future__ import annotations

import json
import os
import shutil
import uuid
from collections.abc import Iterable, Mapping
from pathlib import Path

import torch
from safetensors.torch import save_file

from cycleqd.atomic import fsync_dir
from cycleqd.weights.dtypes import dtype_name, parse_dtype
from cycleqd.weights.source import INDEX_NAME, ModelSource

DEFAULT_MAX_SHARD_BYTES = 5 * 1024**3
_WEIGHT_SUFFIXES = (".safetensors", ".bin", ".pt", ".pth", ".msgpack", ".h5", ".gguf")
_SKIP_FILES = {INDEX_NAME, "pytorch_model.bin.index.json"}


def save_model(
    tensors: Mapping[str, torch.Tensor] | Iterable[tuple[str, torch.Tensor]],
    out_dir: str | Path,
    *,
    template: ModelSource | str | Path | None = None,
    dtype: torch.dtype | str | None = None,
    max_shard_bytes: int = DEFAULT_MAX_SHARD_BYTES,
    metadata: Mapping[str, str] | None = None,
    durable: bool = False,
) -> Path:
    """Write weights as a Hugging Face folder, atomically.

    Tensors are consumed one at a time and flushed to a shard file whenever the next one would push
    the shard past ``max_shard_bytes``, so a generator of tensors is written with at most one shard
    in memory. With several shards, ``model.safetensors.index.json`` lists them, as
    ``save_pretrained`` does. The folder is built beside ``out_dir`` under a temporary name and renamed
    into place at the end: a reader never sees half a model, and an existing folder is replaced only
    once the new one is complete.

    Args:
        tensors: A mapping or an iterable of (name, tensor).
        out_dir: Destination folder.
        template: A model folder whose non-weight files (config, tokenizer, generation config) are
            copied; ``config.json`` gets the storage dtype.
        dtype: Storage dtype of floating-point tensors (``None``/``auto`` keeps each tensor's dtype).
        max_shard_bytes: Largest shard size in bytes.
        metadata: Extra string metadata stored in every shard header.
        durable: Flush every file to disk before the folder is renamed into place, so the folder
            survives a power loss complete (costs a full write to disk: seconds per GB).

    Returns:
        The destination folder.
    """
    out_dir = Path(out_dir)
    target = parse_dtype(dtype)
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    tmp = out_dir.parent / f".{out_dir.name}.tmp-{uuid.uuid4().hex[:8]}"
    tmp.mkdir()
    try:
        template_dir = template.path if isinstance(template, ModelSource) else template
        if template_dir is not None:
            _copy_template(Path(template_dir), tmp, target)
        _write_shards(tensors, tmp, target=target, max_shard_bytes=max_shard_bytes, metadata=metadata)
        if durable:
            _fsync_tree(tmp)
        replace_dir(tmp, out_dir)
        if durable:
            fsync_dir(out_dir.parent)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return out_dir


def _fsync_tree(folder: Path) -> None:
    """Flush every file of a folder, then the folder itself, to disk (before it is renamed into place)."""
    for f in folder.iterdir():
        if f.is_file():
            with open(f, "rb") as fh:
                os.fsync(fh.fileno())
    fsync_dir(folder)


def replace_dir(src: Path, dst: Path) -> None:
    """Move the folder ``src`` to ``dst``, replacing ``dst`` only after ``src`` is complete.

    Args:
        src: A complete folder on the same file system.
        dst: Its final name.
    """
    if dst.exists():
        trash = dst.parent / f".{dst.name}.old-{uuid.uuid4().hex[:8]}"
        dst.rename(trash)
        src.rename(dst)
        shutil.rmtree(trash, ignore_errors=True)
    else:
        src.rename(dst)


def copy_model(
    src: str | Path, out_dir: str | Path, *, template: ModelSource | str | Path | None = None
) -> Path:
    """Copy a saved model to ``out_dir`` as a Hugging Face folder, atomically.

    A folder is copied file by file, each weight file hard-linked where the file system allows (the
    weights of an 8B model are not written again); a single weights file is written as a folder with
    the template's config and tokenizer files.

    Args:
        src: A model folder or a weights file.
        out_dir: Destination folder (replaced only once the copy is complete).
        template: Where the non-weight files come from when ``src`` is a single file.

    Returns:
        The destination folder.
    """
    src, out_dir = Path(src), Path(out_dir)
    if not src.is_dir():
        from cycleqd.weights.source import open_model

        return save_model(open_model(src), out_dir, template=template)
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    tmp = out_dir.parent / f".{out_dir.name}.tmp-{uuid.uuid4().hex[:8]}"
    tmp.mkdir()
    try:
        for f in src.iterdir():
            if not f.is_file():
                continue
            try:
                os.link(f, tmp / f.name)
            except OSError:  # another file system, or links not allowed: copy
                shutil.copy2(f, tmp / f.name)
        replace_dir(tmp, out_dir)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return out_dir


def _copy_template(src: Path, dst: Path, target: torch.dtype | None) -> None:
    if src.is_file():
        return
    for f in src.iterdir():
        if not f.is_file() or f.name in _SKIP_FILES or f.suffix in _WEIGHT_SUFFIXES:
            continue
        if f.name == "config.json" and target is not None:
            cfg = json.loads(f.read_text())
            key = "dtype" if "dtype" in cfg else "torch_dtype"
            cfg[key] = dtype_name(target)
            (dst / f.name).write_text(json.dumps(cfg, indent=2, sort_keys=True) + "\n")
        else:
            shutil.copy2(f, dst / f.name)


def _write_shards(
    tensors: Mapping[str, torch.Tensor] | Iterable[tuple[str, torch.Tensor]],
    folder: Path,
    *,
    target: torch.dtype | None,
    max_shard_bytes: int,
    metadata: Mapping[str, str] | None,
) -> None:
    items = tensors.items() if isinstance(tensors, Mapping) else tensors
    meta = {"format": "pt", **(metadata or {})}
    shard: dict[str, torch.Tensor] = {}
    shard_bytes = 0
    written: list[tuple[Path, list[str]]] = []
    total = 0
    seen: set[int] = set()

    def flush() -> None:
        nonlocal shard, shard_bytes
        path = folder / f"shard-{len(written):05d}.tmp"
        save_file(shard, str(path), metadata=meta)
        written.append((path, list(shard)))
        shard, shard_bytes = {}, 0
        seen.clear()  # the written tensors are freed: their addresses may be reused

    for name, tensor in items:
        t = tensor.detach().cpu()
        if target is not None and t.is_floating_point():
            t = t.to(target)
        t = t.contiguous()
        # safetensors refuses tensors that share storage (tied weights) or views into a larger one.
        ptr = t.untyped_storage().data_ptr()
        if ptr in seen or t.untyped_storage().nbytes() != t.numel() * t.element_size():
            t = t.clone()
        seen.add(t.untyped_storage().data_ptr())
        size = t.numel() * t.element_size()
        if shard and shard_bytes + size > max_shard_bytes:
            flush()
        shard[name] = t
        shard_bytes += size
        total += size
    if shard or not written:
        flush()
    if len(written) == 1:
        written[0][0].rename(folder / "model.safetensors")
        return
    n = len(written)
    weight_map = {}
    for i, (path, names) in enumerate(written, start=1):
        final = f"model-{i:05d}-of-{n:05d}.safetensors"
        path.rename(folder / final)
        weight_map.update(dict.fromkeys(names, final))
    index = {"metadata": {"total_size": total}, "weight_map": weight_map}
    (folder / INDEX_NAME).write_text(json.dumps(index, indent=2, sort_keys=True) + "\n")
