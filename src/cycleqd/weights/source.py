"""Lazy, per-tensor access to the weights of a model on disk.

A :class:`ModelSource` is a read-only mapping from tensor names to tensors. Nothing is read when it is
opened except the headers: each ``source[name]`` reads that one tensor from a memory-mapped file, so a
loop over a model holds one tensor at a time, whatever the model's size.

Supported layouts:

- a Hugging Face folder: ``config.json`` beside ``model.safetensors`` or shards listed in
  ``model.safetensors.index.json`` (also any other ``*.safetensors`` files without an index);
- a single ``.safetensors`` file;
- a torch state dict (``.pt``, ``.pth``, ``.bin``, or a folder with ``pytorch_model.bin``), for models
  that are not language models; it is memory-mapped by ``torch.load(mmap=True)`` where possible;
- a Hugging Face Hub model written ``hf:org/name``, downloaded to the local cache when the hub is
  reachable. The prefix is required: a bare ``org/name`` is a relative path like any other, so a
  mistyped local folder is reported as missing instead of being looked up on the network.
"""

from __future__ import annotations

import json
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import torch
from safetensors import safe_open

from cycleqd.errors import ModelLoadError

HUB_PREFIX = "hf:"
"""Prefix of a Hugging Face Hub model id (``hf:org/name``) wherever a model path is accepted."""

_SAFETENSORS_DTYPES: dict[str, torch.dtype] = {
    "F64": torch.float64,
    "F32": torch.float32,
    "F16": torch.float16,
    "BF16": torch.bfloat16,
    "I64": torch.int64,
    "I32": torch.int32,
    "I16": torch.int16,
    "I8": torch.int8,
    "U8": torch.uint8,
    "BOOL": torch.bool,
}
_TORCH_SUFFIXES = (".pt", ".pth", ".bin")
INDEX_NAME = "model.safetensors.index.json"


class ModelSource(Mapping[str, torch.Tensor]):
    """Read-only, lazily loaded weights of one model.

    Use :func:`open_model` to build one. Indexing reads one tensor (a fresh CPU tensor in the
    storage dtype); ``shape`` and ``dtype`` answer from the headers without reading data.

    Attributes:
        path: The folder or file the weights were read from.
        name: A short name for messages (the folder name unless given).
        config: The parsed ``config.json`` when there is one, else ``None``.
    """

    def __init__(
        self,
        *,
        path: Path,
        name: str,
        files: Mapping[str, Path],
        config: dict[str, Any] | None,
        torch_file: Path | None = None,
    ) -> None:
        self.path = path
        self.name = name
        self.config = config
        self._files = dict(files)
        self._torch_file = torch_file
        self._handles: dict[Path, Any] = {}
        self._state: dict[str, torch.Tensor] | None = None

    # -- Mapping interface -------------------------------------------------------------------------
    def __getitem__(self, name: str) -> torch.Tensor:
        if self._torch_file is not None:
            return self._torch_state()[name]
        try:
            file = self._files[name]
        except KeyError:
            raise KeyError(f"{self.name} has no tensor named {name!r}") from None
        return self._handle(file).get_tensor(name)

    def __iter__(self) -> Iterator[str]:
        if self._torch_file is not None:
            return iter(self._torch_state())
        return iter(self._files)

    def __len__(self) -> int:
        if self._torch_file is not None:
            return len(self._torch_state())
        return len(self._files)

    def __contains__(self, name: object) -> bool:
        if self._torch_file is not None:
            return name in self._torch_state()
        return name in self._files

    # -- headers -----------------------------------------------------------------------------------
    def shape(self, name: str) -> tuple[int, ...]:
        """Shape of a tensor, read from the file header.

        Args:
            name: Tensor name.

        Returns:
            The shape as a tuple.
        """
        if self._torch_file is not None:
            return tuple(self._torch_state()[name].shape)
        return tuple(self._handle(self._files[name]).get_slice(name).get_shape())

    def dtype(self, name: str) -> torch.dtype:
        """Storage dtype of a tensor, read from the file header.

        Args:
            name: Tensor name.

        Returns:
            The torch dtype the tensor is stored in.
        """
        if self._torch_file is not None:
            return self._torch_state()[name].dtype
        return _SAFETENSORS_DTYPES[self._handle(self._files[name]).get_slice(name).get_dtype()]

    def numel(self, name: str) -> int:
        """Number of elements of a tensor, from the header."""
        n = 1
        for d in self.shape(name):
            n *= d
        return n

    @property
    def architecture(self) -> str | None:
        """The architecture named by ``config.json`` (first of ``architectures``, else ``model_type``)."""
        if not self.config:
            return None
        archs = self.config.get("architectures") or []
        return archs[0] if archs else self.config.get("model_type")

    @property
    def is_hf_folder(self) -> bool:
        """Whether this is a Hugging Face folder with a ``config.json``."""
        return self.path.is_dir() and (self.path / "config.json").is_file()

    def close(self) -> None:
        """Release open file handles; the source can still be used and reopens them on demand."""
        self._handles.clear()
        self._state = None

    # -- pickling: handles are reopened where the object lands (Ray workers) ----------------------
    def __getstate__(self) -> dict[str, Any]:
        state = self.__dict__.copy()
        state["_handles"] = {}
        state["_state"] = None
        return state

    def __repr__(self) -> str:
        return f"ModelSource(name={self.name!r}, path={str(self.path)!r}, tensors={len(self)})"

    # -- internals ---------------------------------------------------------------------------------
    def _handle(self, file: Path) -> Any:
        handle = self._handles.get(file)
        if handle is None:
            try:
                handle = safe_open(str(file), framework="pt", device="cpu")
            except Exception as exc:  # safetensors raises its own error types
                raise ModelLoadError(
                    f"cannot read {file}: {exc}; the file may be truncated or not safetensors"
                ) from exc
            self._handles[file] = handle
        return handle

    def _torch_state(self) -> dict[str, torch.Tensor]:
        if self._state is None:
            assert self._torch_file is not None
            self._state = _load_torch_state(self._torch_file)
        return self._state


def open_model(path_or_id: str | Path, *, name: str | None = None) -> ModelSource:
    """Open a model's weights lazily.

    Args:
        path_or_id: A local folder or file (see the module docstring for the layouts), or
            ``hf:org/name`` for a model of the Hugging Face Hub.
        name: Short name for messages; defaults to the folder or file name.

    Returns:
        A :class:`ModelSource` that reads tensors on demand.

    Raises:
        ModelLoadError: When the path does not exist or holds no weights, an index names missing
            shards, two files hold the same tensor, or a hub id cannot be downloaded.
    """
    text = str(path_or_id)
    if text.startswith(HUB_PREFIX):
        path = _download_from_hub(text[len(HUB_PREFIX) :])
    else:
        path = Path(text).expanduser()
        if not path.exists():
            raise ModelLoadError(
                f"{text} does not exist; give a model folder or a weights file (a model of the Hugging "
                f"Face Hub is written {HUB_PREFIX}ORG/NAME)"
            )
    label = name or path.name
    if path.is_file():
        if path.suffix == ".safetensors":
            return ModelSource(path=path, name=label, files=_safetensors_names([path]), config=None)
        if path.suffix in _TORCH_SUFFIXES:
            return ModelSource(path=path, name=label, files={}, config=None, torch_file=path)
        raise ModelLoadError(
            f"{path} is not a weights file: expected .safetensors, .pt, .pth or .bin, or a model folder"
        )
    config = _read_config(path)
    index = path / INDEX_NAME
    if index.is_file():
        files = _indexed_files(path, index)
    else:
        shards = sorted(path.glob("*.safetensors"))
        if shards:
            files = _safetensors_names(shards)
        else:
            torch_files = [
                path / "pytorch_model.bin",
                *sorted(path.glob("*.pt")),
                *sorted(path.glob("*.pth")),
            ]
            torch_file = next((f for f in torch_files if f.is_file()), None)
            if torch_file is None:
                raise ModelLoadError(
                    f"{path} holds no weights: expected model.safetensors, shards with {INDEX_NAME}, "
                    "or a torch state dict (pytorch_model.bin, *.pt); save the model with "
                    "`save_pretrained(..., safe_serialization=True)`"
                )
            return ModelSource(path=path, name=label, files={}, config=config, torch_file=torch_file)
    return ModelSource(path=path, name=label, files=files, config=config)


def _read_config(folder: Path) -> dict[str, Any] | None:
    cfg = folder / "config.json"
    if not cfg.is_file():
        return None
    try:
        return json.loads(cfg.read_text())
    except json.JSONDecodeError as exc:
        raise ModelLoadError(f"{cfg} is not valid JSON ({exc}); restore it from the original model") from exc


def _indexed_files(folder: Path, index: Path) -> dict[str, Path]:
    try:
        weight_map = json.loads(index.read_text())["weight_map"]
    except (json.JSONDecodeError, KeyError) as exc:
        raise ModelLoadError(f"{index} is not a valid safetensors index: {exc}") from exc
    missing = sorted({f for f in weight_map.values() if not (folder / f).is_file()})
    if missing:
        raise ModelLoadError(
            f"{index} names {len(missing)} shard(s) that are not in {folder}: {', '.join(missing)}; "
            "the download or copy is incomplete"
        )
    return {name: folder / f for name, f in weight_map.items()}


def _safetensors_names(files: list[Path]) -> dict[str, Path]:
    names: dict[str, Path] = {}
    for file in files:
        try:
            with safe_open(str(file), framework="pt") as handle:
                keys = list(handle.keys())
        except Exception as exc:
            raise ModelLoadError(f"cannot read {file}: {exc}; the file may be truncated") from exc
        for key in keys:
            if key in names:
                raise ModelLoadError(
                    f"tensor {key!r} is in both {names[key].name} and {file.name}; "
                    f"keep one set of weights per folder or add {INDEX_NAME}"
                )
            names[key] = file
    return names


def _load_torch_state(file: Path) -> dict[str, torch.Tensor]:
    try:
        try:
            obj = torch.load(file, map_location="cpu", mmap=True, weights_only=True)
        except RuntimeError:  # legacy (non-zip) format cannot be memory-mapped
            obj = torch.load(file, map_location="cpu", weights_only=True)
    except Exception as exc:
        raise ModelLoadError(f"cannot load the torch state dict {file}: {exc}") from exc
    if isinstance(obj, dict) and "state_dict" in obj and isinstance(obj["state_dict"], dict):
        obj = obj["state_dict"]
    if not isinstance(obj, dict):
        raise ModelLoadError(f"{file} does not hold a state dict (found {type(obj).__name__})")
    return {k: v for k, v in obj.items() if isinstance(v, torch.Tensor)}


def _download_from_hub(repo_id: str) -> Path:
    if repo_id.count("/") != 1 or repo_id.startswith((".", "/", "~")) or not all(repo_id.split("/")):
        raise ModelLoadError(
            f"{HUB_PREFIX}{repo_id} is not a Hugging Face Hub id; write {HUB_PREFIX}ORG/NAME, or give a "
            "local folder without the prefix"
        )
    try:
        from huggingface_hub import snapshot_download

        local = snapshot_download(
            repo_id,
            allow_patterns=["*.json", "*.safetensors", "*.model", "*.txt", "*.tiktoken", "*.py"],
        )
    except Exception as exc:
        raise ModelLoadError(
            f"{repo_id} is not a local path and could not be downloaded from the Hugging Face hub "
            f"({type(exc).__name__}: {exc}); download it where the hub is reachable "
            f"(`huggingface-cli download {repo_id} --local-dir DIR`) and give DIR instead"
        ) from exc
    return Path(local)
