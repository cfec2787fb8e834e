"""The model zoo: loading, caching, architecture description, and the errors a user can cause."""

from __future__ import annotations

import math
import time

import pytest
import torch

from abspos_utils import models
from abspos_utils.cli import main as cli_main
from abspos_utils.errors import AbsposError
from abspos_utils.models import describe, load_model, ntk_base

PASSAGE = (
    "The history of the city begins in the early Middle Ages, when a small settlement grew up beside the "
    "river crossing. Merchants built warehouses along the banks, and by the thirteenth century the town had "
    "a market charter, a stone bridge and a parish church. Over the following centuries it became known for "
    "its wool trade, and many of the old houses near the square still show the wealth of that period."
)


def perplexity(loaded, text: str) -> float:
    ids = loaded.tokenizer(text, return_tensors="pt")["input_ids"]
    with torch.no_grad():
        logits = loaded.model(ids).logits
    loss = torch.nn.functional.cross_entropy(logits[0, :-1], ids[0, 1:])
    return math.exp(loss.item())


@pytest.mark.parametrize("name", [name for name in models.TINY_MODELS if name not in ("tiny-falcon", "tiny-minimax")])
def test_tiny_models_are_eager_eval_and_seeded(name):
    start = time.perf_counter()
    a, b = load_model(name, seed=3), load_model(name, seed=3)
    assert time.perf_counter() - start < 10  # two loads, import already paid by the session
    assert a.model.config._attn_implementation == "eager"
    assert not a.model.training
    for (_, pa), (_, pb) in zip(a.model.named_parameters(), b.model.named_parameters()):
        assert torch.equal(pa, pb)


def test_tiny_gemma3_description_has_sliding_and_full_layers(tiny_gemma3):
    arch = describe(tiny_gemma3)
    assert arch.sliding_layers == [0, 2] and arch.full_layers == [1, 3]
    assert {layer.window for layer in arch.layers if layer.kind == "sliding"} == {models.TINY_WINDOW}
    assert [layer.rope_theta for layer in arch.layers] == [1e4, 1e6, 1e4, 1e6]
    assert arch.adds_bos and arch.bos_id == 1


def test_describe_and_auto_prompts_share_one_bos_probe(tiny_llama, monkeypatch):
    """Whether a tokenizer adds BOS is decided in one place (prompts.tokenizer_adds_bos) for both."""
    from abspos_utils import prompts

    assert models.tokenizer_adds_bos is prompts.tokenizer_adds_bos
    assert describe(tiny_llama).adds_bos and prompts.make_prompts(tiny_llama.tokenizer, n_prompts=2, seq_len=24).has_bos
    monkeypatch.setattr(models, "tokenizer_adds_bos", lambda tokenizer: False)
    monkeypatch.setattr(prompts, "tokenizer_adds_bos", lambda tokenizer: False)
    assert not describe(tiny_llama).adds_bos
    assert not prompts.make_prompts(tiny_llama.tokenizer, n_prompts=2, seq_len=24).has_bos


def test_tiny_mistral_is_sliding_everywhere(tiny_mistral):
    assert describe(tiny_mistral).sliding_layers == [0, 1, 2, 3]


def test_ntk_scaling_sets_the_scaled_frequencies():
    loaded = load_model("tiny-llama", ntk_factor=4.0)
    arch = describe(loaded)
    d = arch.head_dim
    expected_base = ntk_base(1e4, 4.0, d)
    assert expected_base == pytest.approx(1e4 * 4 ** (d / (d - 2)))
    expected = 1.0 / expected_base ** (torch.arange(0, d, 2, dtype=torch.float64) / d)
    inv_freq = loaded.model.model.rotary_emb.inv_freq.double()
    torch.testing.assert_close(inv_freq, expected, rtol=1e-5, atol=0)
    assert arch.layers[0].rope_type == "ntk" and arch.layers[0].rope_factor == 4.0


def test_unknown_name_is_one_sentence():
    with pytest.raises(AbsposError, match="Unknown model 'smollm3'.*zoo name"):
        load_model("smollm3")


def test_hub_id_without_network_is_explained(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")  # the user's own offline switch is respected at once
    with pytest.raises(AbsposError, match="Cannot reach the Hugging Face hub"):
        load_model("someone/some-model-that-is-not-cached")


@pytest.mark.slow
def test_hub_id_with_no_route_to_the_hub_is_explained(monkeypatch):
    """Without the offline switch the hub is really asked; on a machine without network that fails."""
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    with pytest.raises(AbsposError, match="Hugging Face"):
        load_model("someone/some-model-that-is-not-cached")


def test_model_without_rope_is_refused(tmp_path):
    from transformers import GPT2Config, GPT2LMHeadModel

    GPT2LMHeadModel(GPT2Config(n_layer=1, n_head=2, n_embd=16, vocab_size=260)).save_pretrained(tmp_path)
    models.byte_tokenizer().save_pretrained(tmp_path)
    with pytest.raises(AbsposError, match="no rotary position embedding"):
        load_model(str(tmp_path))


def test_checksum_mismatch_is_explained(tmp_path):
    path = tmp_path / "weights.gguf"
    path.write_bytes(b"not the model")
    with pytest.raises(AbsposError, match="checksum of .*weights.gguf.*delete the folder"):
        models.verify_sha256(path, models.ZOO["gemma3-270m"].gguf_sha256)


def test_cli_models_list_and_describe(capsys):
    assert cli_main(["models", "list"]) == 0
    out = capsys.readouterr().out
    assert "smollm2-135m" in out and "gemma3-270m" in out and "Gemma Terms" in out
    assert cli_main(["models", "describe", "tiny-gemma3"]) == 0
    out = capsys.readouterr().out
    assert "sliding" in out and "1000000.0" in out
    assert cli_main(["models", "describe", "nope"]) == 1
    assert "Unknown model 'nope'" in capsys.readouterr().err


@pytest.mark.slow
@pytest.mark.parametrize("name", ["smollm2-135m", "gemma3-270m"])
def test_real_models_are_real_weights(name):
    loaded = load_model(name)  # first call dequantizes and caches
    start = time.perf_counter()
    loaded = load_model(name)
    assert time.perf_counter() - start < 10, "a cached load should take seconds"
    ppl = perplexity(loaded, PASSAGE)
    torch.manual_seed(0)
    random = type(loaded.model)(loaded.model.config).eval()
    random_ppl = perplexity(models.LoadedModel(name, random, loaded.tokenizer, "random", ""), PASSAGE)
    assert ppl < 60 and random_ppl > 1000, (ppl, random_ppl)
    record = (models.cache_dir() / "models" / name / "abspos_source.json").read_text()
    assert models.ZOO[name].gguf_sha256 in record


@pytest.mark.slow
def test_gemma3_description(gemma3):
    arch = describe(gemma3)
    assert arch.full_layers == [5, 11, 17]
    assert len(arch.sliding_layers) == 15
    assert {layer.window for layer in arch.layers if layer.kind == "sliding"} == {512}
    assert {layer.rope_theta for layer in arch.layers if layer.kind == "sliding"} == {1e4}
    assert {layer.rope_theta for layer in arch.layers if layer.kind == "full"} == {1e6}
    assert arch.adds_bos and arch.bos_id == 2 and (arch.n_heads, arch.n_kv_heads, arch.head_dim) == (4, 1, 256)


@pytest.mark.slow
def test_smollm2_ntk_variant_has_scaled_frequencies(smollm2):
    ntk = load_model("smollm2-135m-ntk")
    d = describe(ntk).head_dim
    base = ntk_base(1e5, 4.0, d)
    expected = 1.0 / base ** (torch.arange(0, d, 2, dtype=torch.float64) / d)
    torch.testing.assert_close(ntk.model.model.rotary_emb.inv_freq.double(), expected, rtol=1e-5, atol=0)
    standard = smollm2.model.model.rotary_emb.inv_freq.double()
    assert torch.equal(standard[0], expected[0].to(standard.dtype)) or standard[0] == pytest.approx(1.0)
    assert (ntk.model.model.rotary_emb.inv_freq[1:] < smollm2.model.model.rotary_emb.inv_freq[1:]).all()
    assert not describe(smollm2).adds_bos
