"""Adapters as training tools leave them: a PEFT folder (Hugging Face PEFT, Unsloth, axolotl) or an
mlx-lm folder, converted on load to the GGUF llama.cpp takes, and cached on disk.

The cache is keyed by the SHA-256 of the source files (and of what the conversion depends on: the
converter's version and the served model's architecture and layout), so a second load of the same folder
costs reading it, and a retrained folder is converted again. Cached bytes are validated like any GGUF.
"""

from __future__ import annotations

import hashlib
import json
import logging
import re
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from engine.llama.adapters.base_model import AdapterBase
from engine.llama.adapters.conversion import AdapterConversionError, TrainedLora, to_gguf_tensors, write_gguf
from engine.llama.adapters.files import AdapterFileBytes, shown
from engine.llama.adapters.mlx import WEIGHTS_FILE as MLX_WEIGHTS
from engine.llama.adapters.mlx import is_mlx_config, parse_mlx
from engine.llama.adapters.peft import CONFIG_FILE, PICKLE_FILE, is_peft_config, load_config, parse_peft
from engine.llama.adapters.peft import WEIGHTS_FILE as PEFT_WEIGHTS

logger = logging.getLogger(__name__)

CONVERTER_VERSION = "loramux-lora-1"  # part of the cache key: bump when the conversion's output changes


@dataclass(frozen=True)
class ConvertedAdapter:
    gguf: bytes
    source_format: str  # "peft" or "mlx-lm"
    source_sha256: dict[str, str]  # source file name → SHA-256
    warnings: tuple[str, ...]
    from_cache: bool


# Reads one file of the folder, confined as the folder itself is (a callable: the directories decide).
FileReader = Callable[[Path], AdapterFileBytes]


class FolderConverter:
    def __init__(self, base: AdapterBase, cache_dir: Path | None) -> None:
        self.base = base
        self.cache_dir = cache_dir

    def convert(self, folder: Path, display: str, read: FileReader, *, use_cache: bool = True) -> ConvertedAdapter:
        """Blocking (file system, numpy): run in a worker thread. `use_cache=False`: convert even if the
        cache holds a conversion (it was found damaged), and replace it."""
        where = shown(display)
        config_path = folder / CONFIG_FILE
        if not config_path.exists():
            raise AdapterConversionError(
                f"{where} is a folder without {CONFIG_FILE}: an adapter folder is a PEFT folder ({CONFIG_FILE} + "
                f"{PEFT_WEIGHTS}) or an mlx-lm folder ({CONFIG_FILE} + {MLX_WEIGHTS})"
            )
        config_bytes = read(config_path).data
        config = load_config(config_bytes, where)
        if is_peft_config(config):
            kind, weights_name, parse = "peft", PEFT_WEIGHTS, parse_peft
        elif is_mlx_config(config):
            kind, weights_name, parse = "mlx-lm", MLX_WEIGHTS, parse_mlx
        else:
            raise AdapterConversionError(
                f"{where}/{CONFIG_FILE} is neither a PEFT config (peft_type) nor an mlx-lm one (lora_parameters)"
            )
        weights_path = folder / weights_name
        if not weights_path.exists():
            if kind == "peft" and (folder / PICKLE_FILE).exists():
                raise AdapterConversionError(
                    f"{where} holds {PICKLE_FILE}, a pickle, which is never loaded (it can run code): save the "
                    f"adapter with safe_serialization=True to get {PEFT_WEIGHTS}"
                )
            raise AdapterConversionError(f"{where} has no {weights_name}")
        weights_bytes = read(weights_path).data
        hashes = {
            CONFIG_FILE: hashlib.sha256(config_bytes).hexdigest(),
            weights_name: hashlib.sha256(weights_bytes).hexdigest(),
        }
        cached = self._cache_path(kind, hashes)
        if use_cache and cached is not None and cached.is_file():
            try:
                data = cached.read_bytes()
            except OSError as exc:
                logger.warning("conversion cache %s unreadable (%s): converting again", cached, exc)
            else:
                return ConvertedAdapter(data, kind, hashes, self._warnings(config, kind, where), from_cache=True)
        lora: TrainedLora = parse(config_bytes, weights_bytes, where)
        tensors = to_gguf_tensors(lora, self.base, where)
        data = self._write(tensors, lora.alpha, cached)
        return ConvertedAdapter(data, kind, hashes, self._warnings(config, kind, where), from_cache=False)

    def _write(self, tensors: list, alpha: float, cached: Path | None) -> bytes:
        if cached is not None:
            try:
                cached.parent.mkdir(parents=True, exist_ok=True)
                write_gguf(tensors, alpha, self.base.architecture, cached)
                return cached.read_bytes()
            except OSError as exc:
                logger.warning("conversion cache %s not writable (%s): converting in a temporary file", cached, exc)
        import tempfile

        with tempfile.TemporaryDirectory(prefix="loramux-convert-") as tmp:
            path = Path(tmp) / "adapter.gguf"
            write_gguf(tensors, alpha, self.base.architecture, path)
            return path.read_bytes()

    def _cache_path(self, kind: str, hashes: dict[str, str]) -> Path | None:
        if self.cache_dir is None:
            return None
        b = self.base
        key = json.dumps(
            [
                CONVERTER_VERSION,
                kind,
                b.architecture,
                b.block_count,
                b.head_count,
                b.head_count_kv,
                sorted(hashes.items()),
            ]
        )
        return self.cache_dir / (hashlib.sha256(key.encode()).hexdigest() + ".gguf")

    def _warnings(self, config: dict, kind: str, where: str) -> tuple[str, ...]:
        """A warning, not an error, when the folder says it was trained on another model: names vary."""
        field = "base_model_name_or_path" if kind == "peft" else "model"
        trained_on = config.get(field)
        if not isinstance(trained_on, str) or not trained_on or not self.base.names:
            return ()
        trained = _plain(trained_on.rstrip("/").rsplit("/", 1)[-1])
        served = [_plain(n) for n in self.base.names if _plain(n)]
        if trained and any(trained in s or s in trained for s in served):
            return ()
        message = (
            f"{where} was trained on {trained_on[:100]!r} ({field}) but the served model is {self.base.names[0]!r}: "
            "its output may be meaningless"
        )
        logger.warning(message)
        return (message,)


def _plain(name: str) -> str:
    return re.sub(r"[^a-z0-9]", "", name.lower())
