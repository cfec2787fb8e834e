"""A loopback stand-in for an NDIF server, speaking nnsight 0.8.1's client protocol (offline tests only).

    python tests/ndif_stub.py --model-dir DIR --audit-dir DIR

It serves, on 127.0.0.1 and a free port (printed as ``PORT <n>`` on stdout once listening):

- ``WS /subscribe``: sends ``{"session_id": ...}``, then the job's status frames;
- ``POST /request``: a multipart form with ``data`` (the JSON envelope: model_key, session_id, compress,
  env) and the file ``blob`` (the pickled, optionally zstd-compressed request); answers RECEIVED.

Each request is unpickled with an allow-list of module roots modelled on the public NDIF server's
(``ndif-team/ndif`` protected_environment.py: torch, collections, numpy, math, typing, ... plus the
pickling machinery and nnsight; not ``dataclasses``, ``abc``, ``functools`` or any user package), run
against the stub's own copy of the model (``save_pretrained`` folder) and the saved values are sent back
as a binary COMPLETED frame; an exception becomes an ERROR frame (``RemoteError`` on the client). The
client's project is hidden from this process (its folder is removed from ``sys.path`` and the editable
finder from ``sys.meta_path``), so a request that needs it fails as on the real server. Every request
leaves ``request-<n>.json`` in the audit folder: envelope, headers, payload bytes, the block's source,
its globals and locals by type, every ``module:name`` the pickle imports and what was refused.
See ../shared/notes/nnsight-remote.md §5 for what this emulation does and does not check.
"""

from __future__ import annotations

import argparse
import io
import json
import sys
import traceback
import uuid
from pathlib import Path

REPOSITORY = Path(__file__).resolve().parents[1]

ALLOWED_ROOTS = {
    # the public server's execution allow-list (prefix match on the root module)
    "torch", "collections", "time", "numpy", "sympy", "nnterp", "math", "einops", "urllib3", "typing",
    "operator", "_operator", "pandas", "enum",
    # what unpickling needs besides (the server's deserialization list), and the model's own stack
    "builtins", "copyreg", "pickle", "cloudpickle", "nnsight", "transformers", "tokenizers",
}


def hide_project() -> None:
    """Make the client's project unimportable in this process, as it is on a real server."""
    sys.meta_path[:] = [f for f in sys.meta_path if "editable" not in type(f).__name__.lower()
                        and "editable" not in getattr(f, "__module__", "").lower()]
    sys.path[:] = [p for p in sys.path if p not in ("", ".") and Path(p or ".").resolve() != REPOSITORY
                   and Path(p or ".").resolve() != REPOSITORY / "tests"]
    for name in [m for m in sys.modules if m.split(".")[0] == "abspos_utils"]:
        del sys.modules[name]
    try:
        import abspos_utils  # noqa: F401
    except ImportError as error:
        print(f"stub: client project hidden ({error})", file=sys.stderr, flush=True)
    else:
        raise SystemExit("stub: the client project is still importable; refusing to emulate a server")


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--model-dir", required=True)
    parser.add_argument("--audit-dir", required=True)
    args = parser.parse_args()
    hide_project()

    import tornado.ioloop
    import tornado.web
    import tornado.websocket
    import torch
    from nnsight.intervention.serialization import CustomCloudUnpickler
    from nnsight.modeling.transformers import TransformersModel
    from nnsight.schema.request import RequestModel
    from nnsight.schema.response import ResponseModel, Status
    from nnsight.tracing import tracer as tracing
    from transformers import AutoModelForCausalLM

    torch.set_num_threads(1)
    hf_model = AutoModelForCausalLM.from_pretrained(args.model_dir, attn_implementation="eager").eval()
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(args.model_dir)
    MODEL = TransformersModel(hf_model, tokenizer=tokenizer, task="text-generation")
    audit_dir = Path(args.audit_dir)
    audit_dir.mkdir(parents=True, exist_ok=True)
    sockets: dict[str, object] = {}
    counter = {"n": 0}

    class GuardedUnpickler(CustomCloudUnpickler):
        imported: list[str] = []
        refused: list[str] = []

        def find_class(self, module, name):
            GuardedUnpickler.imported.append(f"{module}:{name}")
            if module.split(".")[0] not in ALLOWED_ROOTS:
                GuardedUnpickler.refused.append(module)
                raise ImportError(f"Module {module} is not whitelisted (stub allow-list)")
            return super().find_class(module, name)

    def run(envelope: dict, blob: bytes, audit: dict) -> dict:
        GuardedUnpickler.imported, GuardedUnpickler.refused = [], []
        try:
            tracer = RequestModel.deserialize(blob, MODEL._remoteable_persistent_objects(),
                                              compress=envelope.get("compress", False), unpickler=GuardedUnpickler)
        finally:
            audit["imports"] = sorted(set(GuardedUnpickler.imported))
            audit["refused"] = sorted(set(GuardedUnpickler.refused))
        frame = tracer.info.frame
        def kind(value) -> str:
            return f"module {value.__name__}" if type(value).__name__ == "module" else type(value).__name__

        audit["globals"] = {k: kind(v) for k, v in frame.f_globals.items() if not k.startswith("__")}
        audit["locals"] = {k: kind(v) for k, v in frame.f_locals.items()}
        audit["source"] = "".join(__import__("linecache").cache.get(frame.f_code.co_filename, (0, 0, [""]))[2])
        MODEL._remoteable_set_env(envelope.get("env") or {})
        tracing.inc()
        try:
            with torch.no_grad():
                tracer.execute(tracer.info.code)
            return {k: v for k, v in tracer.info.frame.f_locals.items() if id(v) in tracing._saves()}
        finally:
            tracing.dec()

    def job(envelope: dict, blob: bytes, headers: dict, job_id: str) -> None:
        counter["n"] += 1
        audit = {"envelope": envelope, "headers": headers, "payload_bytes": len(blob)}
        socket = sockets.get(envelope.get("session_id", ""))
        try:
            saves = run(envelope, blob, audit)
            buffer = io.BytesIO()
            torch.save(saves, buffer)
            data = buffer.getvalue()
            audit["result_bytes"] = len(data)
            if envelope.get("compress"):
                import zstandard

                data = zstandard.ZstdCompressor(level=6).compress(data)
            message = ResponseModel(id=job_id, status=Status.COMPLETED, data=data,
                                    meta={"saved": sorted(saves), "result_bytes": len(data)}).pickle()
            binary = True
        except Exception as error:  # the client raises it as RemoteError
            audit["error"] = "".join(traceback.format_exception_only(type(error), error)).strip()
            message = ResponseModel(id=job_id, status=Status.ERROR,
                                    description=f"{type(error).__name__}: {error}").model_dump_json()
            binary = False
        (audit_dir / f"request-{counter['n']}.json").write_text(json.dumps(audit, indent=1, default=str))
        if socket is not None:
            socket.write_message(message, binary=binary)

    class Subscribe(tornado.websocket.WebSocketHandler):
        def open(self):
            self.session_id = uuid.uuid4().hex
            sockets[self.session_id] = self
            self.write_message(json.dumps({"session_id": self.session_id}))

        def on_close(self):
            sockets.pop(self.session_id, None)

    class Request(tornado.web.RequestHandler):
        def post(self):
            envelope = json.loads(self.get_body_argument("data"))
            blob = self.request.files["blob"][0]["body"]
            job_id = uuid.uuid4().hex
            headers = {k: v for k, v in self.request.headers.items() if k.lower().startswith(("ndif", "nnsight", "python"))}
            self.write(ResponseModel(id=job_id, status=Status.RECEIVED).model_dump_json())
            tornado.ioloop.IOLoop.current().add_callback(job, envelope, blob, headers, job_id)

    app = tornado.web.Application([(r"/subscribe", Subscribe), (r"/request", Request)],
                                  websocket_max_message_size=2**31 - 1)
    server = app.listen(0, address="127.0.0.1", max_body_size=2**31 - 1, max_buffer_size=2**31 - 1)
    port = next(iter(server._sockets.values())).getsockname()[1]
    print(f"PORT {port}", flush=True)
    tornado.ioloop.IOLoop.current().start()


if __name__ == "__main__":
    main()
