"""Remote execution tested offline: the capture's request runs on a loopback NDIF stand-in
(tests/ndif_stub.py) in a process where this project cannot be imported and unpickling uses the public
server's allow-list; the statistics must equal a local run's bit for bit. ``remote="local"`` would not do:
it re-runs the block against the client's own frame (../shared/notes/nnsight-remote.md §4)."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from abspos_utils import capture as C
from abspos_utils.interventions import Intervention
from abspos_utils.prompts import make_prompts

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


FIELDS = ("key0", "entropy", "log_z", "n_visible", "sink_writes", "resid0", "probe_resid", "loss")


def test_a_remote_capture_equals_the_local_one_bit_for_bit(tiny_llama, stub):
    url, audit_dir, _ = stub
    _remote(tiny_llama)
    prompts = make_prompts(tiny_llama.tokenizer, n_prompts=6, seq_len=48)
    replacement = torch.randn(6, tiny_llama.model.config.hidden_size, generator=torch.Generator().manual_seed(0))
    for intervention in (None, Intervention("replaced", position0=replacement, window=16)):
        options = dict(batch_size=2, progress=False, with_loss=True, keep_window_logw=True, qkv_positions=[0, 5],
                       intervention=intervention)
        local = C.collect(tiny_llama, prompts, **options)
        before = len(_audits(audit_dir))
        start = time.perf_counter()
        remote = C.collect(tiny_llama, prompts, remote=url, batches_per_request=3, **options)
        elapsed = time.perf_counter() - start
        audits = _audits(audit_dir)[before:]
        assert len(audits) == 1 and "error" not in audits[0]  # three batches, one session, one request
        for name in FIELDS:
            assert torch.equal(getattr(local, name), getattr(remote, name)), name
        for name in ("q", "k", "v"):
            assert torch.equal(local.qkv[name], remote.qkv[name])
        for window in local.windows:
            assert all(torch.equal(a, b) for a, b in zip(local.window_logw[window], remote.window_logw[window]))
        for key, grams in local.decomposition.grams.items():
            assert torch.equal(grams.raw, remote.decomposition.grams[key].raw)
        print(f"remote ({'intervention' if intervention else 'original'}): request {audits[0]['payload_bytes']:,} "
              f"bytes, result {audits[0]['result_bytes']:,} bytes, {elapsed:.1f} s")


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
