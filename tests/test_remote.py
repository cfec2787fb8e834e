"""Remote execution tested offline: the capture's request runs on a loopback NDIF stand-in
(tests/ndif_stub.py) in a process where this project cannot be imported and unpickling uses the public
server's allow-list; the statistics must equal a local run's bit for bit. ``remote="local"`` would not do:
it re-runs the block against the client's own frame (../shared/notes/nnsight-remote.md §4).

The client of a remote run holds no weights (``models.weightless_model``): it is built from a folder with
the checkpoint's config and tokenizer only, while the stub loads the weights from its own copy."""

from __future__ import annotations

import copy
import json
import re
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from abspos_utils import capture as C
from abspos_utils.errors import AbsposError
from abspos_utils.interventions import Intervention
from abspos_utils.models import describe, holds_no_weights, weightless_model
from abspos_utils.prompts import PromptSet, make_prompts

STUB = Path(__file__).with_name("ndif_stub.py")
ALLOWED_ROOTS = {"builtins", "copyreg", "collections", "cloudpickle", "torch", "nnsight"}
MODEL_ID = "abspos/tiny-llama"


@pytest.fixture(scope="module")
def stub(tiny_llama, tmp_path_factory):
    """The stub on a free loopback port, serving its own save_pretrained copy of tiny-llama."""
    folder = tmp_path_factory.mktemp("ndif")
    tiny_llama.model.save_pretrained(folder / "model")
    tiny_llama.tokenizer.save_pretrained(folder / "model")
    process = subprocess.Popen([sys.executable, str(STUB), "--model-dir", str(folder / "model"),
                                "--audit-dir", str(folder / "audit")], cwd=folder, stdout=subprocess.PIPE,
                               stderr=subprocess.PIPE, text=True)
    line = process.stdout.readline()
    if not line.startswith("PORT"):
        process.kill()
        raise RuntimeError(f"the stub did not start: {line}{process.stderr.read()}")
    yield f"http://127.0.0.1:{line.split()[1]}", folder / "audit", process
    process.kill()
    process.wait()


def _remote(loaded):
    """Mint the model key offline: the client names the checkpoint the stub serves."""
    from nnsight.modeling.huggingface import _ID_CACHE

    traced = C.nnsight_model(loaded)
    traced.repo_id = MODEL_ID
    _ID_CACHE[MODEL_ID] = MODEL_ID


def _audits(folder: Path) -> list[dict]:
    return [json.loads(p.read_text()) for p in sorted(folder.glob("request-*.json"), key=lambda p: p.stat().st_mtime)]


FIELDS = ("sink_score", "mean_key0", "mean_entropy", "mean_log_z", "n_visible", "sink_writes", "resid0", "probe_resid", "loss")


def _local_then_remote(local_model, remote_model, prompts, url, audit_dir, **options):
    """The same collect() locally and through the stub (three batches in one request): (local capture, remote
    capture, the request's audit, seconds), after checking that the two agree bit for bit."""
    local = C.collect(local_model, prompts, **options)
    before = len(_audits(audit_dir))
    start = time.perf_counter()
    remote = C.collect(remote_model, prompts, remote=url, batches_per_request=3, **options)
    elapsed = time.perf_counter() - start
    audits = _audits(audit_dir)[before:]
    assert len(audits) == 1 and "error" not in audits[0]  # three batches, one session, one request
    for name in FIELDS:
        a, b = getattr(local, name), getattr(remote, name)
        assert (a is None and b is None) if a is None else torch.equal(a, b), name
    assert local.qkv.keys() == remote.qkv.keys()
    for name in local.qkv:
        assert torch.equal(local.qkv[name], remote.qkv[name])
    for a, b in zip(local.early_scores, remote.early_scores):
        assert torch.equal(a, b)
    for key, grams in local.decomposition.grams.items():
        assert torch.equal(grams.raw, remote.decomposition.grams[key].raw)
    return local, remote, audits[0], elapsed


def test_a_remote_capture_equals_the_local_one_bit_for_bit(tiny_llama, stub):
    url, audit_dir, _ = stub
    _remote(tiny_llama)
    prompts = make_prompts(tiny_llama.tokenizer, n_prompts=6, seq_len=48)
    replacement = torch.randn(6, tiny_llama.model.config.hidden_size, generator=torch.Generator().manual_seed(0))
    for intervention in (None, Intervention("replaced", position0=replacement, window=16)):
        options = dict(batch_size=2, progress=False, with_loss=True, keep_window_logw=True, qkv_positions=[0, 5],
                       intervention=intervention)
        local, remote, audit, elapsed = _local_then_remote(tiny_llama, tiny_llama, prompts, url, audit_dir, **options)
        for window in local.windows:
            assert all(torch.equal(a, b) for a, b in zip(local.window_logw[window], remote.window_logw[window]))
        print(f"remote ({'intervention' if intervention else 'original'}): request {audit['payload_bytes']:,} "
              f"bytes, result {audit['result_bytes']:,} bytes, {elapsed:.1f} s")


def test_prompt_groups_summed_on_the_server_equal_the_local_sums_bit_for_bit(tiny_llama, stub):
    """With fewer prompt groups than prompts the server sums each batch's late window over its groups (a
    batch of 2 here spans one or two of the 4 groups of 6 prompts) and returns the group sums with the
    per-prompt O(T) reductions: the same statistics as the local run, to the bit."""
    url, audit_dir, _ = stub
    _remote(tiny_llama)
    prompts = make_prompts(tiny_llama.tokenizer, n_prompts=6, seq_len=48)
    local, remote, _, _ = _local_then_remote(tiny_llama, tiny_llama, prompts, url, audit_dir, batch_size=2,
                                             n_groups=4, progress=False)
    assert list(local.window_logw) == ["early"] and local.decomposition.n_groups == 4
    for key, grams in local.decomposition.grams.items():
        for part, value in grams.self_pairs.items():
            assert torch.equal(value, remote.decomposition.grams[key].self_pairs[part]), (key, part)


def test_the_request_is_self_contained_and_ships_no_weights(tiny_llama, stub):
    """The payload audit: no name of this project, only allow-listed modules, plain values, no weights."""
    url, audit_dir, _ = stub
    _remote(tiny_llama)
    prompts = make_prompts(tiny_llama.tokenizer, n_prompts=2, seq_len=48)
    before = len(_audits(audit_dir))
    C.collect(tiny_llama, prompts, remote=url, progress=False)
    audit = _audits(audit_dir)[before]
    weights = sum(p.numel() * p.element_size() for p in tiny_llama.model.parameters())
    print(f"request {audit['payload_bytes']:,} bytes (model weights {weights:,} bytes); imports "
          f"{sorted({i.split(':')[0] for i in audit['imports']})}; locals {audit['locals']}")
    assert not audit["refused"] and "error" not in audit
    assert {i.split(":")[0].split(".")[0] for i in audit["imports"]} <= ALLOWED_ROOTS
    assert not any("abspos" in i for i in audit["imports"]) and "abspos" not in json.dumps(audit["globals"])
    assert set(audit["locals"].values()) <= {"dict", "list", "Tensor", "TransformersModel", "NoneType", "bool",
                                                "module nnsight", "module torch"}
    assert set(audit["globals"].values()) <= {"module torch", "module nnsight", "module numpy"}
    assert audit["payload_bytes"] < 1_000_000 and audit["payload_bytes"] < weights / 4  # W_O is read on the server


def test_a_host_callback_fails_on_the_server(tiny_llama, stub):
    """The regression guard: the old design (a host callback filling host lists) cannot run remotely."""
    from nnsight.intervention.backends.remote import RemoteError

    url, _, _ = stub
    _remote(tiny_llama)
    kept = []
    with pytest.raises(RemoteError, match="not whitelisted"):
        C.trace_batch(tiny_llama, make_prompts(tiny_llama.tokenizer, n_prompts=2, seq_len=24).input_ids, [0],
                      kept.append, remote=url)
    assert kept == []


# ---------------------------------------------------------------------------------------------------
# The weightless client: config and tokenizer only, the weights stay on the server
# ---------------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def config_only(stub, tmp_path_factory):
    """The stub's checkpoint without its weights: config.json and the tokenizer files, as a client sees
    a hub checkpoint it does not download."""
    import shutil

    served = stub[1].parent / "model"
    folder = tmp_path_factory.mktemp("client") / "tiny-llama-config"
    folder.mkdir()
    for path in served.iterdir():
        if not path.name.endswith((".safetensors", ".bin")):
            shutil.copy(path, folder / path.name)
    assert not list(folder.glob("*.safetensors")) and list(served.glob("*.safetensors"))
    return folder


def _stored_bytes(model: torch.nn.Module) -> int:
    """Bytes of parameter and buffer storage this process holds for the model (0 on the meta device)."""
    return sum(t.numel() * t.element_size() for t in [*model.parameters(), *model.buffers()] if t.device.type != "meta")


def test_a_weightless_client_gets_the_local_statistics_bit_for_bit(tiny_llama, stub, config_only):
    from nnsight.modeling.huggingface import _ID_CACHE

    url, audit_dir, _ = stub
    _ID_CACHE[MODEL_ID] = MODEL_ID  # the hub would canonicalise the id; offline, it names itself
    client = weightless_model(str(config_only), hub_id=MODEL_ID)
    assert client.name == MODEL_ID and client.traced.repo_id == MODEL_ID and client.sha256 == ""
    assert holds_no_weights(client) and _stored_bytes(client.model) == 0
    assert describe(client) == describe(tiny_llama)  # from the config and tokenizer alone
    prompts = make_prompts(client.tokenizer, n_prompts=6, seq_len=48)
    assert torch.equal(prompts.input_ids, make_prompts(tiny_llama.tokenizer, n_prompts=6, seq_len=48).input_ids)
    replacement = torch.randn(6, tiny_llama.model.config.hidden_size, generator=torch.Generator().manual_seed(1))
    for intervention in (None, Intervention("replaced", position0=replacement, window=16)):
        options = dict(batch_size=2, progress=False, with_loss=True, qkv_positions=[0, 5], intervention=intervention)
        _, _, audit, elapsed = _local_then_remote(tiny_llama, client, prompts, url, audit_dir, **options)
        assert not audit["refused"]
        assert json.loads(audit["envelope"]["model_key"].split(":", 1)[1])["repo_id"] == MODEL_ID
        assert holds_no_weights(client)  # the remote trace never dispatched the weights to this process
        print(f"weightless client ({'intervention' if intervention else 'original'}): request "
              f"{audit['payload_bytes']:,} bytes for 3 batches of 2 x 48 tokens, result "
              f"{audit['result_bytes']:,} bytes, {elapsed:.1f} s; client parameter storage "
              f"{_stored_bytes(client.model)} bytes against {_stored_bytes(tiny_llama.model):,} for the local model")


def test_an_experiment_run_remote_builds_the_weightless_client_and_measures(stub, config_only, tmp_path, monkeypatch):
    """The chapters' door: with remote on, Experiment.model loads no weight and measure goes through the server."""
    import nnsight
    from nnsight.modeling.huggingface import _ID_CACHE

    from abspos_utils import Experiment
    from abspos_utils.runner import find_notebook, notebook_parameters

    url, audit_dir, _ = stub
    monkeypatch.setattr(nnsight.CONFIG.API, "HOST", url)  # remote=True goes to the configured NDIF host
    _ID_CACHE[MODEL_ID] = MODEL_ID
    chapter = "02_residual_trajectory"
    values = dict(notebook_parameters(find_notebook(chapter)), model=MODEL_ID, n_prompts=4, seq_len=48,
                  output_dir=str(tmp_path / "out"), remote=True)
    run = Experiment.from_parameters(chapter, values)
    with pytest.raises(AbsposError, match=r"^'tiny-llama' is a tiny model .* no Hugging Face id") as error:
        run.model("tiny-llama")
    assert "\n" not in str(error.value)
    with pytest.raises(AbsposError, match=r"^'smollm2-135m' is a zoo model dequantized here from a GGUF"):
        run.model("smollm2-135m")  # refused before anything is downloaded
    with pytest.raises(AbsposError, match=r"^A remote run needs the Hugging Face id .* pass hub_id='org/name'"):
        run.model(str(config_only))
    with pytest.raises(AbsposError, match=r"is not a Hugging Face id \(org/name\)"):
        run.model(str(config_only), hub_id=str(config_only))
    with pytest.raises(AbsposError, match=r"^NTK scaling .* run the NTK arm locally"):
        run.model(str(config_only), hub_id=MODEL_ID, ntk_factor=4.0)
    client = run.model(str(config_only), hub_id=MODEL_ID)
    assert holds_no_weights(client) and run.model(str(config_only), hub_id=MODEL_ID) is client
    assert json.loads((run.output_dir / "run.json").read_text())["models"][0]["hub_id"] == MODEL_ID
    prompts = run.prompts(client)
    before = len(_audits(audit_dir))
    measured = run.measure(client, prompts, "original")
    assert len(_audits(audit_dir)) > before and measured.statistics.sink_score.shape[1] == 4
    assert holds_no_weights(client)


def test_the_request_of_a_llama_8b_shaped_batch_is_small(tmp_path, monkeypatch):
    """The request of one batch of the 8B run the reproducing chapter plans (B = 8, T = 4096, late_rows 64),
    serialised by nnsight's own client code from a weightless Llama-3.1-8B-shaped client and not sent."""
    from nnsight.intervention.backends.remote import RemoteBackend
    from nnsight.modeling.huggingface import _ID_CACHE
    from transformers import LlamaConfig

    from abspos_utils.bench import LLAMA_8B_SHAPE
    from abspos_utils.models import byte_tokenizer

    hub_id = "meta-llama/Llama-3.1-8B"
    config = LlamaConfig(**{**LLAMA_8B_SHAPE, "num_hidden_layers": 32, "vocab_size": 128256,
                            "bos_token_id": 128000, "eos_token_id": 128001})
    config.save_pretrained(tmp_path)
    byte_tokenizer().save_pretrained(tmp_path)  # a stand-in: the ids below are drawn from Llama's vocabulary
    client = weightless_model(str(tmp_path), hub_id=hub_id)
    assert holds_no_weights(client) and describe(client).n_layers == 32
    _ID_CACHE[hub_id] = hub_id
    sizes = []

    class Sent(Exception):
        pass

    def request(self, request, tracer):
        sizes.append(len(self._serialize(tracer)))
        raise Sent

    monkeypatch.setattr(RemoteBackend, "request", request)
    ids = torch.randint(0, 128256, (8, 4096), generator=torch.Generator().manual_seed(0))  # incompressible text
    prompts = PromptSet(ids, "random", "none", False, None, 0)
    with pytest.raises(Sent):
        C.collect(client, prompts, remote="http://127.0.0.1:9", batch_size=8, late_rows=64, progress=False)
    weights = 8_030_523_392 * 2  # the plan's parameter count in bfloat16
    print(f"Llama-3.1-8B-shaped client, one batch of 8 x 4096 tokens, late_rows 64: request {sizes[0]:,} bytes "
          f"(input ids {ids.numel() * 8:,} bytes before compression; weights in bfloat16 {weights:,} bytes)")
    assert sizes and sizes[0] < 400_000


@pytest.mark.parametrize("name", ["tiny-gemma3", "tiny-gemma3-multimodal", "tiny-smollm3", "tiny-gpt-oss",
                                  "tiny-deepseek-v3", "tiny-gpt-neox", "tiny-falcon"])
def test_a_weightless_client_of_each_family_is_described_from_its_config(name, tmp_path):
    """Sliding windows, NoPE layers, sinks, MLA and multimodal wrappers: the meta client describes the model as
    the loaded one does, passes the static label check, or is refused in the family's one sentence."""
    from abspos_utils import families
    from abspos_utils.models import LoadedModel, _tiny_config, _tiny_model, byte_tokenizer

    _tiny_config(name).save_pretrained(tmp_path)
    byte_tokenizer().save_pretrained(tmp_path)
    family = families.FAMILIES.get(_tiny_config(name).get_text_config().model_type, families.DEFAULT)
    if family.refusal:
        with pytest.raises(AbsposError, match=re.escape(family.refusal)):
            weightless_model(str(tmp_path), hub_id=f"abspos/{name}")
        return
    client = weightless_model(str(tmp_path), hub_id=f"abspos/{name}")
    local = LoadedModel(name, _tiny_model(name, 0), byte_tokenizer(), "", "")
    assert holds_no_weights(client) and type(client.model) is type(local.model)
    assert repr(describe(client)) == repr(describe(local))  # repr: NoPE layers have a NaN theta


def test_a_hub_id_needs_only_its_config_and_says_so_offline(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(AbsposError, match=r"^Cannot reach the Hugging Face hub to fetch 'meta-llama/Llama-3.1-8B'"):
        weightless_model("meta-llama/Llama-3.1-8B")


def test_a_weightless_client_refuses_what_needs_the_weights(tmp_path):
    """Position-0 replacements and the random-weight control are built from the weights: on a weightless
    client they are refused in one sentence instead of failing on meta tensors."""
    from abspos_utils.experiment import Experiment
    from abspos_utils.models import LoadedModel, load_model

    loaded = load_model("tiny-llama")
    meta = LoadedModel(loaded.name, copy.deepcopy(loaded.model).to("meta"), loaded.tokenizer, "", "", 0.0, {})
    assert holds_no_weights(meta)
    run = Experiment("04_bos_replacement", {"model": "tiny-llama", "n_prompts": 4, "seq_len": 48,
                                            "output_dir": str(tmp_path)})
    prompts = run.prompts(meta)
    for build in (lambda: run.position0(meta, prompts, "zeros"), lambda: run.random_init(meta)):
        with pytest.raises(AbsposError, match="weightless client") as error:
            build()
        assert "\n" not in str(error.value)
