"""The family adapter: the label contract on a hand-built attention layer, every RoPE family of transformers 5
running chapter 01's measurement on a tiny random model (or refused in one sentence), NoPE layers, windows
and NTK scaling per family."""

from __future__ import annotations

from dataclasses import replace

import pytest
import torch
from torch import nn

from abspos_utils import families, metrics as M, models
from abspos_utils.capture import collect, trace_batch
from abspos_utils.errors import AbsposError
from abspos_utils.models import describe, load_model, ntk_base
from abspos_utils.prompts import make_prompts

SEQ = 48
REFUSED = {"tiny-falcon": "inline", "tiny-minimax": "linear-attention"}


# ---------------------------------------------------------------------------------------------------
# The label contract, pinned on a hand-built single attention layer (no transformers weights)
# ---------------------------------------------------------------------------------------------------


def eager_attention_forward(module, query, key, value, attention_mask, scaling, **kwargs):
    """The shape of every transformers eager attention function: scores, mask, softmax, weighted values."""
    attn_weights = torch.matmul(query, key.transpose(2, 3)) * scaling
    if attention_mask is not None:
        attn_weights = attn_weights + attention_mask
    attn_weights = nn.functional.softmax(attn_weights, dim=-1, dtype=torch.float32)
    attn_output = torch.matmul(attn_weights, value)
    return attn_output.transpose(1, 2), attn_weights


class ToyAttention(nn.Module):
    """One attention layer written like a transformers one: it calls its attention function with (q, k, v)."""

    def __init__(self, d: int = 8, heads: int = 2):
        super().__init__()
        self.heads, self.head_dim, self.scaling = heads, d // heads, (d // heads) ** -0.5
        self.q_proj, self.k_proj, self.v_proj, self.o_proj = (nn.Linear(d, d, bias=False) for _ in range(4))

    def forward(self, hidden_states, attention_mask):
        shape = (*hidden_states.shape[:2], self.heads, self.head_dim)
        query_states = self.q_proj(hidden_states).view(shape).transpose(1, 2)
        key_states = self.k_proj(hidden_states).view(shape).transpose(1, 2)
        value_states = self.v_proj(hidden_states).view(shape).transpose(1, 2)
        attention_interface = eager_attention_forward
        attn_output, attn_weights = attention_interface(
            self, query_states, key_states, value_states, attention_mask, scaling=self.scaling
        )
        return self.o_proj(attn_output.reshape(*hidden_states.shape)), attn_weights


class ToyModel(nn.Module):
    def __init__(self):
        super().__init__()
        self.self_attn = ToyAttention()

    def forward(self, hidden_states, attention_mask):
        return self.self_attn(hidden_states, attention_mask)


def test_label_contract_on_a_hand_built_attention_layer():
    """The default entry's labels read q, k, v, the scores and the softmax of any attention written this way."""
    import nnsight

    torch.manual_seed(0)
    toy, x = ToyModel(), torch.randn(2, 5, 8)
    mask = torch.full((5, 5), torch.finfo(torch.float32).min).triu(1)[None, None]
    families.check_labels(toy.self_attn, families.DEFAULT)  # every label exists: no error
    family = families.DEFAULT
    traced = nnsight.NNsight(toy)
    with traced.trace(x, mask):
        call = getattr(traced.self_attn.source, family.attention_call)
        (_, q, k, v, *_), _ = call.inputs
        scores = getattr(call.source, family.scores).output
        softmax = getattr(call.source, family.softmax)
        saved = nnsight.save({"q": q, "k": k, "v": v, "scores": scores, "input": softmax.input,
                              "output": softmax.output})
    attention = toy.self_attn
    expected_v = attention.v_proj(x).view(2, 5, 2, 4).transpose(1, 2)
    torch.testing.assert_close(saved["v"], expected_v)  # (batch, head, T, head_dim), not the raw projection
    torch.testing.assert_close(saved["scores"], saved["q"] @ saved["k"].transpose(2, 3) * attention.scaling)
    torch.testing.assert_close(saved["input"], saved["scores"] + mask)  # the softmax input is the masked score
    torch.testing.assert_close(saved["output"].sum(-1), torch.ones(2, 2, 5))
    _, weights = toy(x, mask)
    torch.testing.assert_close(saved["output"], weights)


def test_a_missing_label_is_one_sentence_listing_the_labels_there_are():
    broken = replace(families.DEFAULT, softmax="F_softmax_0")
    with pytest.raises(AbsposError, match=r"eager_attention_forward has no nnsight operation 'F_softmax_0' "
                                          r"\(its labels are: .*nn_functional_softmax_0") as error:
        families.check_labels(ToyAttention(), broken)
    assert "\n" not in str(error.value) and "families.py" in str(error.value)


def test_loading_a_model_whose_labels_are_wrong_stops_before_any_trace(monkeypatch):
    monkeypatch.setitem(families.FAMILIES, "llama", replace(families.DEFAULT, attention_call="attention_interface_9"))
    with pytest.raises(AbsposError, match="LlamaAttention.forward has no nnsight operation 'attention_interface_9'"):
        load_model("tiny-llama")


# ---------------------------------------------------------------------------------------------------
# Every family: chapter 01's measurement on a tiny random model, or a one-sentence refusal
# ---------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("name", [name for name in models.TINY_CONFIGS])
def test_every_family_runs_chapter_01_or_is_refused(name):
    if name in REFUSED:
        with pytest.raises(AbsposError, match=REFUSED[name]) as error:
            load_model(name)
        assert "\n" not in str(error.value) and "no rotary position embedding" not in str(error.value)
        return
    loaded = load_model(name)  # includes the load-time probe against output_attentions
    arch = describe(loaded)
    text = make_prompts(loaded.tokenizer, "text", n_prompts=2, seq_len=SEQ, bos="prepend")
    views = []
    trace_batch(loaded, text.input_ids, list(range(arch.n_layers)), views.append)
    family = families.family_of(loaded.model)
    for view in views:
        rows = view.log_weights.exp().sum(-1)
        if family.sink_logits:  # gpt-oss: the learned sink takes the rest of each row
            sinks = families.attention_module(loaded.model, view.layer).sinks.float()
            rows = rows + (sinks[None, :, None] - view.log_z).exp()
        torch.testing.assert_close(rows, torch.ones_like(rows), atol=1e-5, rtol=0)
    statistics = collect(loaded, text, progress=False)
    statistics.decomposition.to_decomposition()  # the streamed decomposition
    expected = [min(SEQ, layer.window or SEQ) for layer in arch.layers]
    assert statistics.n_visible.max(-1).values.tolist() == expected  # sliding windows honoured and described
    repeated = make_prompts(loaded.tokenizer, "repeated", n_prompts=2, seq_len=SEQ, bos="none")
    control = M.shares(M.decompose(collect(loaded, repeated, progress=False, keep_window_logw=True)).grams[("late", "all")])["L_res"]
    # the zero control: identical hidden states leave no within-row structure. With learned sinks the
    # attention output itself depends on position (the sink's share shrinks as keys accumulate), so only
    # the first layer's input is position-free.
    checked = control[:1] if family.sink_logits else control
    assert checked.abs().max() < 1e-5


def test_gpt_oss_sink_makes_the_repeated_token_control_positional():
    """Not a bug: with a sink logit, sum_j a_ij < 1 shrinks with i, so layer 1 sees position (chapter 05)."""
    loaded = load_model("tiny-gpt-oss")
    repeated = make_prompts(loaded.tokenizer, "repeated", n_prompts=2, seq_len=SEQ, bos="none")
    control = M.shares(M.decompose(collect(loaded, repeated, progress=False, keep_window_logw=True)).grams[("late", "all")])["L_res"]
    assert control[1:].abs().max() > 1e-6


def test_gpt2_is_refused_in_one_sentence():
    from transformers import GPT2Config, GPT2LMHeadModel

    with pytest.raises(AbsposError, match=r"^'gpt2-test' \(gpt2\) has no rotary position embedding, [^\n]*\.$"):
        models.require_rope(GPT2LMHeadModel(GPT2Config(n_layer=1, n_head=2, n_embd=16, vocab_size=260)),
                            "gpt2-test")


def test_a_model_whose_every_layer_is_nope_is_refused():
    from transformers import AutoConfig, AutoModelForCausalLM

    config = AutoConfig.for_model("smollm3", vocab_size=260, hidden_size=32, intermediate_size=64,
                                  num_hidden_layers=2, num_attention_heads=2, num_key_value_heads=2,
                                  no_rope_layers=[0, 0], pad_token_id=0, bos_token_id=1, eos_token_id=2)
    with pytest.raises(AbsposError, match="every layer is NoPE"):
        models.require_rope(AutoModelForCausalLM.from_config(config), "all-nope")


@pytest.mark.parametrize("name", ["tiny-gpt-neox", "tiny-gemma3-multimodal", "tiny-phi"])
def test_rotary_models_with_the_rotary_module_elsewhere_are_recognised(name):
    loaded = load_model(name)
    assert families.rotary_module(loaded.model) is not None
    assert families.decoder_path(loaded.model) in ("gpt_neox", "model.language_model", "model")


# ---------------------------------------------------------------------------------------------------
# describe: NoPE layers, windows, partial rotary, MLA
# ---------------------------------------------------------------------------------------------------


def test_nope_layers_are_described_as_nope():
    smollm3 = describe(load_model("tiny-smollm3"))
    assert smollm3.nope_layers == [1] and smollm3.layers[1].kind == "full (NoPE)"
    assert smollm3.layers[1].rope_type == "none" and smollm3.layers[0].rope_theta == 2e6
    cohere2 = describe(load_model("tiny-cohere2"))  # RoPE on the sliding layers only
    assert [layer.kind for layer in cohere2.layers] == ["sliding", "full (NoPE)"]
    capture_kinds = collect(load_model("tiny-smollm3"), make_prompts(
        load_model("tiny-smollm3").tokenizer, n_prompts=2, seq_len=SEQ), progress=False).layer_kind
    assert capture_kinds == ["full", "full (NoPE)"]  # every per-layer table carries the NoPE mark


def test_windows_partial_rotary_and_mla_are_described():
    assert describe(load_model("tiny-starcoder2")).sliding_layers == [0, 1]  # no layer_types, a sliding_window
    assert describe(load_model("tiny-qwen2")).sliding_layers == [1]  # max_window_layers 1
    assert describe(load_model("tiny-gpt-neox")).layers[0].rotary_fraction == 0.25
    assert describe(load_model("tiny-phi")).layers[0].rotary_fraction == 0.5
    assert describe(load_model("tiny-deepseek-v3")).head_dim == 24  # q . k runs over nope 16 + rope 8


# ---------------------------------------------------------------------------------------------------
# NTK scaling per family
# ---------------------------------------------------------------------------------------------------


def test_ntk_scales_each_layer_type_of_gemma3_and_olmo3():
    for name in ("tiny-gemma3", "tiny-olmo3"):
        before, after = describe(load_model(name)), describe(load_model(name, ntk_factor=4.0))
        for old, new in zip(before.layers, after.layers):
            assert new.rope_theta == pytest.approx(ntk_base(old.rope_theta, 4.0, 16)) and new.rope_type == "ntk"
    loaded = load_model("tiny-gemma3", ntk_factor=4.0)
    rotary = families.rotary_module(loaded.model)
    full = rotary.full_attention_inv_freq.double()
    torch.testing.assert_close(full, 1.0 / ntk_base(1e6, 4.0, 16) ** (torch.arange(0, 16, 2).double() / 16),
                               rtol=1e-5, atol=0)


def test_ntk_composes_with_llama3_and_yarn_scaling():
    for name, kind in (("tiny-llama3", "llama3"), ("tiny-llama-yarn", "yarn")):
        base = load_model(name)
        loaded = load_model(name, ntk_factor=4.0)
        params = loaded.model.config.rope_parameters
        assert params["rope_type"] == kind and params["factor"] == base.model.config.rope_parameters["factor"]
        layer = describe(loaded).layers[0]
        assert layer.rope_type == f"ntk+{kind}" and layer.rope_factor == 4.0
        rotary = families.rotary_module(loaded.model)
        assert (rotary.inv_freq[1:] < families.rotary_module(base.model).inv_freq[1:]).all()
        assert rotary.attention_scaling == families.rotary_module(base.model).attention_scaling  # yarn's kept


def test_ntk_exponent_uses_the_rotary_dimension():
    loaded = load_model("tiny-gpt-neox", ntk_factor=4.0)  # head_dim 16, rotary 25%: 4 rotated dimensions
    assert loaded.model.config.rope_parameters["rope_theta"] == pytest.approx(ntk_base(1e4, 4.0, 4))
