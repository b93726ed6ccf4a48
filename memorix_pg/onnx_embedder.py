"""The ONNX backend of the sentence-transformers embedders: the same model, run by onnxruntime.

On first use a model's packaged weights are exported once, offline, with torch's own exporter
(``torch.onnx.export``) into ``<data dir>/models/<model>-<key>/``. The key is a hash of the model's
files (and of this export recipe), so an upgraded model gets a new export and an old one is never
used for it. The graph holds the whole sentence-transformers pipeline (transformer, pooling,
normalisation), so running it needs only ``onnxruntime``, ``tokenizers`` and numpy: torch and
sentence-transformers are not imported once the export exists.

The cache is safe to share:

* an export is written into a temporary directory, then renamed into place, so a reader sees
  either no export or a complete one;
* a file lock (``<models dir>/.<export>.lock``) makes concurrent processes export once: the
  others wait, then load what the first one wrote;
* ``manifest.json`` records the SHA-256 and size of every file; a file that no longer matches
  (truncated, overwritten) is detected at load and the export is rebuilt;
* every export is checked against the torch model on a few texts before it is published
  (cosine >= 0.99999), so a broken export is never cached.

Models the recipe cannot express (modules other than Transformer, Pooling and Normalize, pooling
other than mean, cls or max, a slow tokenizer) raise :class:`OnnxUnsupported`; the embedder then
stays on torch unless ONNX was forced.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import shutil
import tempfile
import threading
import time
import uuid
import warnings
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt

from .errors import ConfigurationError

__all__ = [
    "EXPORT_FORMAT",
    "CachedExport",
    "OnnxModel",
    "OnnxUnsupported",
    "ensure_export",
    "list_exports",
    "load_onnx_model",
    "model_key",
    "models_dir",
]

# Part of every cache key: bump it when the exported graph or the manifest changes meaning.
EXPORT_FORMAT = 1
MANIFEST = "manifest.json"
MODEL_FILE = "model.onnx"
TOKENIZER_FILE = "tokenizer.json"
# Texts compared with the torch model before an export is published.
CHECK_TEXTS = (
    "a",
    "The cat sat on the mat.",
    "User prefers dark mode and short answers; remind them about the 3 pm meeting.",
    "Ünïcödé, emoji 😀 and 東京 all go through the same tokenizer.",
    "word " * 400,  # longer than max_seq_length: truncation must agree
)
MIN_CHECK_COSINE = 0.99999

Vectors = npt.NDArray[np.float32]


class OnnxUnsupported(ConfigurationError):
    """This model cannot run on the ONNX backend (the message says why)."""


def models_dir(data_dir: Path | None = None) -> Path:
    """Where exports are cached: ``$MEMORIX_MODELS_DIR`` if set, else ``<data dir>/models``
    (``$MEMORIX_DATA_DIR`` or the user data dir)."""
    if data_dir is None:
        configured = os.environ.get("MEMORIX_MODELS_DIR")
        if configured:
            return Path(configured).expanduser().resolve()
        from .server import default_data_dir

        data_dir = default_data_dir()
    return data_dir / "models"


# -- cache keys -----------------------------------------------------------------------------------


def _model_files(source: Path) -> list[Path]:
    return sorted(
        p
        for p in source.rglob("*")
        if p.is_file() and not any(part.startswith(".") for part in p.relative_to(source).parts)
    )


def _file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def model_key(source: Path, cache: Path | None = None) -> str:
    """A hash of the model's files (names and contents) and of :data:`EXPORT_FORMAT`.

    Hashing ~90 MB of weights costs ~50 ms, so the result is remembered in
    ``<cache>/.sources/`` under a hash of the files' names, sizes and modification times; a
    changed file changes that fingerprint and the contents are hashed again.
    """
    files = _model_files(source)
    if not files:
        raise OnnxUnsupported(f"no model files in {source}")
    fingerprint = hashlib.sha256(f"format {EXPORT_FORMAT}\n".encode())
    for path in files:
        stat = path.stat()
        fingerprint.update(f"{path.relative_to(source)}\0{stat.st_size}\0{stat.st_mtime_ns}\n".encode())
    memo = cache / ".sources" / fingerprint.hexdigest()[:32] if cache is not None else None
    if memo is not None:
        with contextlib.suppress(OSError):
            remembered = memo.read_text().strip()
            if len(remembered) == 64:
                return remembered
    digest = hashlib.sha256(f"format {EXPORT_FORMAT}\n".encode())
    for path in files:
        digest.update(f"{path.relative_to(source)}\0{_file_sha256(path)}\n".encode())
    key = digest.hexdigest()
    if memo is not None:
        with contextlib.suppress(OSError):
            _atomic_write(memo, key)
    return key


def _atomic_write(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{uuid.uuid4().hex}.tmp")
    tmp.write_text(text)
    os.replace(tmp, path)


def _slug(model: str) -> str:
    name = Path(model).name or "model"
    return "".join(c if c.isalnum() or c in "-_." else "_" for c in name)[:60]


def export_dir_for(model: str, key: str, cache: Path) -> Path:
    return cache / f"{_slug(model)}-{key[:16]}"


# -- manifest and verification --------------------------------------------------------------------


def _read_manifest(directory: Path) -> dict[str, Any] | None:
    try:
        manifest = json.loads((directory / MANIFEST).read_text())
    except (OSError, ValueError):
        return None
    return manifest if isinstance(manifest, dict) else None


def verify_export(directory: Path, *, checksums: bool = True) -> str | None:
    """``None`` if the export in ``directory`` is complete and intact, else what is wrong."""
    manifest = _read_manifest(directory)
    if manifest is None:
        return "no readable manifest.json"
    if manifest.get("format") != EXPORT_FORMAT:
        return f"export format {manifest.get('format')!r}, expected {EXPORT_FORMAT}"
    files = manifest.get("files")
    if not isinstance(files, dict) or set(files) != {MODEL_FILE, TOKENIZER_FILE}:
        return "manifest.json lists no files"
    for name, recorded in files.items():
        path = directory / name
        try:
            size = path.stat().st_size
        except OSError:
            return f"{name} is missing"
        if size != recorded.get("size"):
            return f"{name} has {size} bytes, the manifest says {recorded.get('size')}"
        if checksums and _file_sha256(path) != recorded.get("sha256"):
            return f"{name} does not match its recorded SHA-256"
    return None


# -- export ---------------------------------------------------------------------------------------


@contextlib.contextmanager
def _file_lock(path: Path) -> Iterator[None]:
    """An exclusive lock between processes (``flock``; a no-op where fcntl does not exist)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("a") as handle:
        try:
            import fcntl
        except ImportError:  # pragma: no cover - not POSIX: the atomic rename still protects readers
            yield
            return
        fcntl.flock(handle.fileno(), fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle.fileno(), fcntl.LOCK_UN)


def _describe_pipeline(st: Any) -> tuple[Any, str]:
    """The transformer module and pooling mode, or OnnxUnsupported."""
    modules = list(st)
    kinds = [type(m).__name__ for m in modules]
    if kinds[:2] != ["Transformer", "Pooling"] or kinds[2:] not in ([], ["Normalize"]):
        raise OnnxUnsupported(f"the ONNX export covers Transformer, Pooling[, Normalize] models, not {kinds}")
    transformer, pooling = modules[0], modules[1]
    config = pooling.get_config_dict()
    mode = config.get("pooling_mode")
    if mode is None:  # older sentence-transformers: one flag per mode
        flags = [k[len("pooling_mode_") :] for k, v in config.items() if k.startswith("pooling_mode_") and v]
        mode = flags[0].removesuffix("_token").removesuffix("_tokens") if len(flags) == 1 else None
    if mode not in ("mean", "cls", "max"):
        raise OnnxUnsupported(f"pooling {config!r} is not supported by the ONNX export")
    tokenizer = getattr(transformer, "tokenizer", None)
    if getattr(tokenizer, "backend_tokenizer", None) is None:
        raise OnnxUnsupported("the model has no fast tokenizer (tokenizer.json) to run without transformers")
    if getattr(tokenizer, "pad_token_id", None) is None:
        raise OnnxUnsupported("the model's tokenizer has no padding token")
    return transformer, str(mode)


def _export_into(st: Any, target: Path) -> dict[str, Any]:
    """Write model.onnx and tokenizer.json for a loaded SentenceTransformer; return the manifest."""
    import inspect

    import torch

    transformer, mode = _describe_pipeline(st)
    auto_model = transformer.auto_model
    tokenizer = transformer.tokenizer
    accepted = set(inspect.signature(auto_model.forward).parameters)
    inputs = [name for name in ("input_ids", "attention_mask", "token_type_ids") if name in accepted]
    if inputs[:2] != ["input_ids", "attention_mask"]:
        raise OnnxUnsupported(f"the transformer takes {sorted(accepted)}, not input_ids and attention_mask")

    class Pipeline(torch.nn.Module):
        def __init__(self, model: Any) -> None:
            super().__init__()
            self.model = model

        def forward(self, *args: Any) -> Any:
            feeds = dict(zip(inputs, args, strict=True))
            hidden = self.model(**feeds).last_hidden_state
            mask = feeds["attention_mask"].unsqueeze(-1).to(hidden.dtype)
            if mode == "mean":
                pooled = (hidden * mask).sum(1) / mask.sum(1).clamp(min=1e-9)
            elif mode == "max":
                pooled = hidden.masked_fill(mask == 0, -1e9).max(1).values
            else:
                pooled = hidden[:, 0]
            # Always unit rows, as the embedder's torch path (normalize_embeddings=True) gives.
            return torch.nn.functional.normalize(pooled, p=2, dim=1)

    # The eager attention traces into the plain MatMul/Softmax pattern onnxruntime fuses.
    previous = getattr(auto_model.config, "_attn_implementation", None)
    setter = getattr(auto_model, "set_attn_implementation", None)
    if callable(setter):
        with contextlib.suppress(Exception):
            setter("eager")
    try:
        ids = torch.tensor([[101, 2023, 2003, 1037, 3231, 102], [101, 2023, 102, 0, 0, 0]])
        sample = {
            "input_ids": ids,
            "attention_mask": (ids > 0).long(),
            "token_type_ids": torch.zeros_like(ids),
        }
        axes: dict[str, dict[int, str]] = {name: {0: "batch", 1: "tokens"} for name in inputs}
        axes["embedding"] = {0: "batch"}
        with warnings.catch_warnings(), torch.no_grad():
            warnings.simplefilter("ignore")
            torch.onnx.export(
                Pipeline(auto_model).eval(),
                tuple(sample[name] for name in inputs),
                str(target / MODEL_FILE),
                input_names=inputs,
                output_names=["embedding"],
                dynamic_axes=axes,
                opset_version=17,
                dynamo=False,
            )
    except ImportError as exc:
        raise OnnxUnsupported(f"exporting to ONNX needs the 'onnx' package: {exc}") from None
    finally:
        if callable(setter) and previous is not None:
            with contextlib.suppress(Exception):
                setter(previous)
    (target / TOKENIZER_FILE).write_text(tokenizer.backend_tokenizer.to_str())
    return {
        "inputs": inputs,
        "pooling": mode,
        "dim": int((getattr(st, "get_embedding_dimension", None) or st.get_sentence_embedding_dimension)()),
        "max_seq_length": int(st.max_seq_length),
        "do_lower_case": bool(getattr(transformer, "do_lower_case", False)),
        "padding_side": str(getattr(tokenizer, "padding_side", "right")),
        "pad_token": str(tokenizer.pad_token),
        "pad_id": int(tokenizer.pad_token_id),
        "pad_type_id": int(getattr(tokenizer, "pad_token_type_id", 0) or 0),
        "torch": torch.__version__,
    }


def ensure_export(
    model: str, source: Path, load_sentence_transformer: Callable[[], Any], cache: Path | None = None
) -> Path:
    """The directory of a verified export of ``model`` (files in ``source``), exporting it if needed.

    ``load_sentence_transformer`` is called only when an export must be written (it imports torch).
    """
    cache = models_dir() if cache is None else cache
    key = model_key(source, cache)
    target = export_dir_for(model, key, cache)
    if target.is_dir() and verify_export(target) is None:
        return target
    with _file_lock(cache / f".{target.name}.lock"):
        problem = verify_export(target) if target.is_dir() else "absent"
        if problem is None:  # another process exported it while this one waited for the lock
            return target
        if problem != "absent":
            warnings.warn(f"rebuilding the ONNX export {target}: {problem}", RuntimeWarning, stacklevel=3)
        # Only the lock holder stages this export: what is left is from an exporter that died.
        for debris in cache.glob(f".{target.name}.*"):
            if debris.is_dir():
                shutil.rmtree(debris, ignore_errors=True)
        st = load_sentence_transformer()
        staging = Path(tempfile.mkdtemp(prefix=f".{target.name}.", dir=cache))
        try:
            manifest = _export_into(st, staging)
            manifest.update(
                format=EXPORT_FORMAT,
                model=model,
                source=str(source),
                key=key,
                created=time.strftime("%Y-%m-%dT%H:%M:%S%z"),
                files={
                    name: {"size": (staging / name).stat().st_size, "sha256": _file_sha256(staging / name)}
                    for name in (MODEL_FILE, TOKENIZER_FILE)
                },
            )
            onnx_model = OnnxModel(staging, manifest)
            expected = np.asarray(
                st.encode(list(CHECK_TEXTS), convert_to_numpy=True, normalize_embeddings=True),
                dtype=np.float32,
            )
            got = onnx_model.encode(CHECK_TEXTS)
            cosine = float(np.min(_row_cosines(expected, got)))
            if cosine < MIN_CHECK_COSINE:
                raise OnnxUnsupported(
                    f"the ONNX export of {model!r} disagrees with torch "
                    f"(cosine {cosine:.6f} < {MIN_CHECK_COSINE})"
                )
            manifest["check_cosine"] = cosine
            del onnx_model
            _atomic_write(staging / MANIFEST, json.dumps(manifest, indent=2, sort_keys=True))
            if target.exists():
                trash = cache / f".trash-{target.name}-{uuid.uuid4().hex[:8]}"
                os.replace(target, trash)
                shutil.rmtree(trash, ignore_errors=True)
            os.replace(staging, target)
        finally:
            if staging.exists():
                shutil.rmtree(staging, ignore_errors=True)
    return target


def _row_cosines(a: Vectors, b: Vectors) -> npt.NDArray[np.float64]:
    a64, b64 = a.astype(np.float64), b.astype(np.float64)
    return np.asarray(
        (a64 * b64).sum(1) / (np.linalg.norm(a64, axis=1) * np.linalg.norm(b64, axis=1)), dtype=np.float64
    )


# -- run ------------------------------------------------------------------------------------------


class OnnxModel:
    """An exported model: tokenizers + onnxruntime, nothing else. Thread-safe."""

    def __init__(self, directory: Path, manifest: dict[str, Any] | None = None) -> None:
        import onnxruntime  # type: ignore[import-untyped]
        from tokenizers import Tokenizer

        manifest = manifest if manifest is not None else _read_manifest(directory)
        if manifest is None:
            raise ConfigurationError(f"no ONNX export in {directory}")
        self.directory = directory
        self.manifest = manifest
        self.dim = int(manifest["dim"])
        self._inputs: list[str] = list(manifest["inputs"])
        self._lower = bool(manifest.get("do_lower_case"))
        options = onnxruntime.SessionOptions()
        options.log_severity_level = 3
        self._session = onnxruntime.InferenceSession(
            str(directory / MODEL_FILE), options, providers=["CPUExecutionProvider"]
        )
        tokenizer = Tokenizer.from_file(str(directory / TOKENIZER_FILE))
        # tokenizer.json may carry its own (e.g. fixed 128-token) settings: use the model's.
        # Padding is done here, per batch of similar lengths, not by the tokenizer.
        tokenizer.no_padding()
        tokenizer.no_truncation()
        tokenizer.enable_truncation(max_length=int(manifest["max_seq_length"]))
        self._tokenizer = tokenizer
        self._pad = (int(manifest["pad_id"]), int(manifest.get("pad_type_id", 0)))
        self._left = manifest.get("padding_side") == "left"

    def encode(self, texts: Sequence[str], max_rows: int = 64, max_tokens: int = 2048) -> Vectors:
        """Embed ``texts``: sorted by token count, run in batches of at most ``max_rows`` texts and
        ``max_tokens`` padded tokens (a long text does not pad 63 short ones to 256 tokens)."""
        out = np.empty((len(texts), self.dim), dtype=np.float32)
        if not texts:
            return out
        prepared = [t.lower() for t in texts] if self._lower else list(texts)
        encodings = self._tokenizer.encode_batch(prepared)
        lengths = [len(e.ids) for e in encodings]
        order = sorted(range(len(texts)), key=lengths.__getitem__)
        start = 0
        while start < len(order):
            end = start + 1
            while (
                end < len(order)
                and end - start < max_rows
                and (end - start + 1) * lengths[order[end]] <= max_tokens
            ):
                end += 1
            rows = order[start:end]
            out[rows] = self._run([encodings[i] for i in rows], lengths[rows[-1]])
            start = end
        return out

    def _run(self, encodings: list[Any], width: int) -> Vectors:
        pad_id, pad_type_id = self._pad
        ids = np.full((len(encodings), width), pad_id, dtype=np.int64)
        mask = np.zeros((len(encodings), width), dtype=np.int64)
        types = np.full((len(encodings), width), pad_type_id, dtype=np.int64)
        for row, encoding in enumerate(encodings):
            n = len(encoding.ids)
            span = slice(width - n, width) if self._left else slice(0, n)
            ids[row, span] = encoding.ids
            mask[row, span] = 1
            types[row, span] = encoding.type_ids
        columns = {"input_ids": ids, "attention_mask": mask, "token_type_ids": types}
        result = self._session.run(None, {name: columns[name] for name in self._inputs})[0]
        return np.asarray(result, dtype=np.float32)


_loaded: dict[str, OnnxModel] = {}  # by model key
_loaded_lock = threading.Lock()


def load_onnx_model(
    model: str, source: Path, load_sentence_transformer: Callable[[], Any], cache: Path | None = None
) -> OnnxModel:
    """The process-wide :class:`OnnxModel` of ``model``, exporting it first if the cache lacks it.

    A model already loaded in this process is reused even when the cache dir has changed since
    (another ``MEMORIX_DATA_DIR``): its files are the same, so there is nothing to export again.
    """
    cache = models_dir() if cache is None else cache
    key = model_key(source, cache)
    with _loaded_lock:
        loaded = _loaded.get(key)
    if loaded is not None:
        return loaded
    directory = ensure_export(model, source, load_sentence_transformer, cache)
    with _loaded_lock:
        loaded = _loaded.get(key)
        if loaded is None:
            loaded = _loaded[key] = OnnxModel(directory)
        return loaded


# -- listing --------------------------------------------------------------------------------------


@dataclass(frozen=True)
class CachedExport:
    """One export in the cache, as ``memorix-pg models`` lists it."""

    path: Path
    model: str
    size_bytes: int
    created: str
    problem: str | None  # None when intact


def list_exports(cache: Path | None = None, *, checksums: bool = True) -> list[CachedExport]:
    """Every export directory under ``cache`` (default :func:`models_dir`), intact or not."""
    cache = models_dir() if cache is None else cache
    if not cache.is_dir():
        return []
    found = []
    for directory in sorted(p for p in cache.iterdir() if p.is_dir() and not p.name.startswith(".")):
        manifest = _read_manifest(directory) or {}
        size = sum(p.stat().st_size for p in directory.rglob("*") if p.is_file())
        found.append(
            CachedExport(
                path=directory,
                model=str(manifest.get("model", "?")),
                size_bytes=size,
                created=str(manifest.get("created", "?")),
                problem=verify_export(directory, checksums=checksums),
            )
        )
    return found
