"""The learner's path in JupyterLab: ``make lab`` serves the repository, a chapter opens as a notebook, runs
in a kernel, saves to its paired ``.ipynb`` (git-ignored) without touching the book, and reads in Lab.

A module fixture starts JupyterLab exactly as ``make lab`` does (``make -o setup lab``: the same recipe, without
re-running the set-up), on 127.0.0.1 and a free port, with the browser off and a random token, and with the
user-level Jupyter folders (config, data, runtime, lab settings and workspaces) in a temporary folder, so that
only what the repository and ``make setup`` install is in play. A second fixture then does what a learner
does, through the server's REST and websocket APIs (the ones Lab's front end uses): it opens
``notebooks/01_mask_denominator.py`` through the contents API, inserts a cell of tiny parameters after the
parameters cell (``TINY``), starts a kernel session, executes every code cell, removes the inserted cell and
saves the notebook. Each test then checks one consequence, so a failure names what broke:

- the chapter is served as a notebook, and the kernel is the project's ``.venv`` Python;
- it runs with no error output;
- saving writes ``notebooks/01_mask_denominator.ipynb`` (with the outputs), which git ignores, and leaves the
  tracked ``.py`` byte-identical (pairing needs jupytext to find ``notebooks/jupytext.toml`` inside the
  server's root);
- no new untracked file appears anywhere in the repository, ``book/findings/`` is byte-identical, and the
  run's tables go to ``runs/lab/01_mask_denominator``;
- the "In words" sentence the book shows through MyST glue is also an ordinary output (readable in Lab);
- in headless Chromium, the server's start page is ``notebooks/README.md`` rendered, and the chapter's Lab
  URL shows the notebook view (not the text editor) with a kernel started and no "Select Kernel" dialog.

Everything the test creates (the paired ``.ipynb``, ``runs/lab/01_mask_denominator``, checkpoints) is removed
afterwards unless it existed before; the server, its kernels and Chromium are stopped by process id.

Run alone: ``pytest tests/test_lab.py`` (marked ``slow``; 45–60 s on two shared cores, most of it the run of
chapter 01 on ``tiny-llama``). The DOMs Chromium saw are kept beside the server's log in pytest's temporary folder.
"""

from __future__ import annotations

import ast
import hashlib
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import tempfile
import time
import urllib.error
import urllib.request
import uuid
from collections import Counter
from dataclasses import dataclass, field
from html.parser import HTMLParser
from pathlib import Path

import nbformat
import pytest

pytestmark = pytest.mark.slow

REPO = Path(__file__).resolve().parents[1]
CHAPTER = "notebooks/01_mask_denominator.py"
NAME = Path(CHAPTER).stem
PAIRED = REPO / "notebooks" / f"{NAME}.ipynb"
LAB_RUN = REPO / "runs" / "lab" / NAME
# Where the chapters wrote before output_dir was anchored at the repository root (kernel cwd is notebooks/).
STRAY = REPO / "notebooks" / "book" / "findings" / NAME
FINDINGS = REPO / "book" / "findings"
LAB_SETTINGS = REPO / ".venv" / "share" / "jupyter" / "lab" / "settings" / "overrides.d" / "abspos.json"
TINY = 'model = "tiny-llama"\nn_prompts = 4\nseq_len = 48'
START_TIMEOUT = 90  # seconds for the server to answer
CELL_TIMEOUT = 300  # seconds for one cell


# ---------------------------------------------------------------------------------------------------
# The server
# ---------------------------------------------------------------------------------------------------


@dataclass
class Lab:
    url: str
    token: str
    log: Path
    process: subprocess.Popen
    kernel_pids: list[int] = field(default_factory=list)

    def api(self, method: str, path: str, body: dict | None = None, timeout: float = 60) -> dict:
        request = urllib.request.Request(f"{self.url}{path}", method=method,
                                         data=None if body is None else json.dumps(body).encode(),
                                         headers={"Authorization": f"token {self.token}",
                                                  "Content-Type": "application/json"})
        with urllib.request.urlopen(request, timeout=timeout) as response:
            text = response.read().decode()
        return json.loads(text) if text else {}

    def log_tail(self, n: int = 40) -> str:
        return "\n".join(self.log.read_text(errors="replace").splitlines()[-n:])


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _stop_server(process: subprocess.Popen) -> None:
    """SIGTERM to the process group `make lab` leads (jupyter then shuts its kernels down), SIGKILL after 20 s."""
    for sig, wait in ((signal.SIGTERM, 20), (signal.SIGKILL, 10)):
        try:
            os.killpg(process.pid, sig)
        except ProcessLookupError:
            pass
        try:
            process.wait(timeout=wait)
            return
        except subprocess.TimeoutExpired:
            continue


def _stop_kernel(pid: int) -> None:
    """A kernel the server failed to shut down (not our child: polled, then SIGKILL after 10 s)."""
    try:
        os.kill(pid, signal.SIGTERM)
    except ProcessLookupError:
        return
    for _ in range(100):
        time.sleep(0.1)
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return
    try:
        os.kill(pid, signal.SIGKILL)
    except ProcessLookupError:
        pass


@pytest.fixture(scope="module")
def lab(tmp_path_factory) -> Lab:
    if not shutil.which("make"):
        pytest.skip("make is not installed")
    assert (REPO / ".venv" / "bin" / "jupyter").exists(), "no .venv/bin/jupyter: run `make setup` first"
    assert LAB_SETTINGS.is_file(), f"{LAB_SETTINGS.relative_to(REPO)} is missing: `make setup` installs it"
    home = tmp_path_factory.mktemp("jupyter_home")
    port, token = _free_port(), uuid.uuid4().hex
    env = dict(os.environ, JUPYTER_TOKEN=token, JUPYTER_CONFIG_DIR=str(home / "config"),
               JUPYTER_DATA_DIR=str(home / "data"), JUPYTER_RUNTIME_DIR=str(home / "runtime"),
               JUPYTERLAB_SETTINGS_DIR=str(home / "settings"), JUPYTERLAB_WORKSPACES_DIR=str(home / "workspaces"),
               IPYTHONDIR=str(home / "ipython"))
    env.pop("MPLBACKEND", None)  # inline figures, as in a learner's Lab
    for name in ("MAKEFLAGS", "MFLAGS", "MAKELEVEL"):  # under `make test`: a make of its own, not a sub-make
        env.pop(name, None)
    log = home / "lab.log"
    checkpoints = REPO / "notebooks" / ".ipynb_checkpoints"  # Lab makes one for each file it opens
    checkpoints_before = set(checkpoints.iterdir()) if checkpoints.is_dir() else None
    with log.open("w") as sink:
        # -o setup: the lab recipe itself, without re-running the set-up (CI's `make test` has just done it).
        process = subprocess.Popen(["make", "--no-print-directory", "-o", "setup", "lab", "LAB_BROWSER=no",
                                    f"LAB_PORT={port}", "LAB_ARGS=--ServerApp.port_retries=0"],
                                   cwd=REPO, env=env, stdout=sink, stderr=subprocess.STDOUT, start_new_session=True)
    server = Lab(url=f"http://127.0.0.1:{port}", token=token, log=log, process=process)
    try:
        deadline = time.monotonic() + START_TIMEOUT
        while True:
            if process.poll() is not None:
                pytest.fail(f"`make lab` exited with {process.returncode}:\n{server.log_tail()}")
            try:
                server.api("GET", "/api/status", timeout=5)
                break
            except (urllib.error.URLError, ConnectionError, OSError):
                if time.monotonic() > deadline:
                    pytest.fail(f"JupyterLab did not answer on {server.url} in {START_TIMEOUT} s:\n{server.log_tail()}")
                time.sleep(0.5)
        yield server
    finally:
        try:  # close every session (the test's and the browser's) so their kernels stop before the server does
            for session in server.api("GET", "/api/sessions", timeout=10):
                server.api("DELETE", f"/api/sessions/{session['id']}", timeout=30)
        except (urllib.error.URLError, OSError, ValueError):
            pass
        _stop_server(process)
        for pid in server.kernel_pids:  # normally already shut down with the server
            _stop_kernel(pid)
        if checkpoints.is_dir():
            for path in set(checkpoints.iterdir()) - (checkpoints_before or set()):
                _remove(path)
            if checkpoints_before is None and not any(checkpoints.iterdir()):
                checkpoints.rmdir()


def test_make_lab_listens_on_loopback_only(lab: Lab) -> None:
    port = int(lab.url.rsplit(":", 1)[1])
    listening = subprocess.run(["ss", "-ltnH", f"sport = :{port}"], capture_output=True, text=True)
    if listening.returncode:
        pytest.skip("ss is not available")
    addresses = {line.split()[3].rsplit(":", 1)[0] for line in listening.stdout.splitlines() if line.strip()}
    assert addresses and addresses <= {"127.0.0.1"}, f"make lab listens on {addresses}, not only 127.0.0.1"
    with pytest.raises(urllib.error.HTTPError) as refused:  # and a request without the token is refused
        urllib.request.urlopen(f"{lab.url}/api/contents", timeout=10)
    assert refused.value.code == 403


def test_lab_settings_open_chapters_as_notebooks(lab: Lab) -> None:
    docmanager = lab.api("GET", "/lab/api/settings/@jupyterlab/docmanager-extension:plugin")
    viewers = docmanager["schema"]["properties"]["defaultViewers"]["default"]
    assert viewers.get("python") == "Jupytext Notebook", (
        f"default viewers {viewers}: the lab settings from etc/jupyterlab/abspos.json are not in effect")
    tracker = lab.api("GET", "/lab/api/settings/@jupyterlab/notebook-extension:tracker")
    assert tracker["schema"]["properties"]["autoStartDefaultKernel"]["default"] is True


# ---------------------------------------------------------------------------------------------------
# A learner's run of chapter 01 through the server's APIs
# ---------------------------------------------------------------------------------------------------


@dataclass
class LearnerRun:
    opened: dict  # the contents model as served
    executed: nbformat.NotebookNode  # with outputs, the inserted cell removed (as saved)
    kernel: dict  # executable, cwd, pid of the kernel
    seconds: float
    source_before: bytes
    source_after: bytes
    untracked_before: set[str]
    untracked_after: set[str]
    findings_before: str | None
    findings_after: str | None


def _untracked() -> set[str]:
    done = subprocess.run(["git", "status", "--porcelain", "--untracked-files=all"], cwd=REPO,
                          capture_output=True, text=True, check=True)
    return {line[3:] for line in done.stdout.splitlines() if line.startswith("??")}


def _tree_hash(folder: Path) -> str | None:
    if not folder.exists():
        return None
    digest = hashlib.sha256()
    for path in sorted(p for p in folder.rglob("*") if p.is_file()):
        digest.update(path.relative_to(folder).as_posix().encode() + b"\0" + path.read_bytes())
    return digest.hexdigest()


def _execute(ws, session_id: str, code: str) -> tuple[list, str]:
    """Run ``code`` in the kernel behind the websocket; its outputs as nbformat outputs, and the reply status."""
    msg_id = uuid.uuid4().hex
    ws.send(json.dumps({
        "header": {"msg_id": msg_id, "msg_type": "execute_request", "username": "test", "session": session_id,
                   "date": "", "version": "5.3"},
        "parent_header": {}, "metadata": {}, "channel": "shell", "buffers": [],
        "content": {"code": code, "silent": False, "store_history": True, "user_expressions": {},
                    "allow_stdin": False, "stop_on_error": True}}))
    outputs, status, idle = [], None, False
    deadline = time.monotonic() + CELL_TIMEOUT
    while status is None or not idle:
        ws.settimeout(max(1.0, deadline - time.monotonic()))
        message = json.loads(ws.recv())
        if message.get("parent_header", {}).get("msg_id") != msg_id:
            continue
        kind = message["header"]["msg_type"]
        if message["channel"] == "shell" and kind == "execute_reply":
            status = message["content"]["status"]
        elif kind == "status":
            idle = message["content"]["execution_state"] == "idle"
        elif kind == "clear_output":
            outputs.clear()
        elif kind in {"stream", "display_data", "execute_result", "error"}:
            outputs.append(nbformat.v4.output_from_msg(message))
    return outputs, status


def _remove(path: Path) -> None:
    if path.is_dir():
        shutil.rmtree(path)
    elif path.exists():
        path.unlink()


@pytest.fixture(scope="module")
def learner_run(lab: Lab) -> LearnerRun:
    import websocket  # websocket-client, a dependency of jupyter_server

    source = REPO / CHAPTER
    before = dict(source=source.read_bytes(), untracked=_untracked(), findings=_tree_hash(FINDINGS))
    kept = {path: path.exists() for path in (PAIRED, LAB_RUN, STRAY)}  # removed afterwards unless there before
    parents = {path: path.exists() for path in (LAB_RUN.parent, LAB_RUN.parent.parent, STRAY.parent,
                                                STRAY.parents[1])}  # removed only if left empty
    paired_bytes = PAIRED.read_bytes() if PAIRED.exists() else None
    session, saved = None, None
    try:
        opened = lab.api("GET", f"/api/contents/{CHAPTER}?content=1")
        nb = nbformat.from_dict(opened["content"]) if opened.get("type") == "notebook" else None
        if nb is None:
            pytest.fail(f"{CHAPTER} is served as {opened.get('type')!r}, not as a notebook")
        where = next(i for i, cell in enumerate(nb.cells) if "parameters" in cell.metadata.get("tags", []))
        nb.cells.insert(where + 1, nbformat.v4.new_code_cell(TINY, metadata={"tags": ["test-parameters"]}))

        # Lab starts the notebook's kernel (jupytext names it from the language) or, failing that, the default.
        kernel_name = nb.metadata.get("kernelspec", {}).get("name") or lab.api("GET", "/api/kernelspecs")["default"]
        session = lab.api("POST", "/api/sessions", {"path": CHAPTER, "type": "notebook", "name": Path(CHAPTER).name,
                                                    "kernel": {"name": kernel_name}})
        ws_url = lab.url.replace("http://", "ws://") + f"/api/kernels/{session['kernel']['id']}/channels"
        ws = websocket.create_connection(ws_url, header=[f"Authorization: token {lab.token}"], timeout=60)
        try:
            probe, _ = _execute(ws, session["id"],
                                "import os, sys, json; print(json.dumps(dict(pid=os.getpid(), "
                                "executable=sys.executable, cwd=os.getcwd())))")
            kernel = json.loads(probe[0]["text"])
            lab.kernel_pids.append(kernel["pid"])
            start = time.monotonic()
            count = 0
            for cell in nb.cells:
                if cell.cell_type != "code":
                    continue
                count += 1
                cell.outputs, status = _execute(ws, session["id"], cell.source)
                cell.execution_count = count
                if status != "ok":
                    break
            seconds = time.monotonic() - start
        finally:
            ws.close()
        nb.cells = [cell for cell in nb.cells if "test-parameters" not in cell.metadata.get("tags", [])]
        if source.read_bytes() != before["source"]:
            pytest.fail(f"{CHAPTER} changed on disk while the test ran it; not saving over it")
        lab.api("PUT", f"/api/contents/{CHAPTER}", {"type": "notebook", "format": "json", "content": nb})
        saved = source.read_bytes()
        lab.api("DELETE", f"/api/sessions/{session['id']}")  # as closing the notebook does; stops the kernel
        session = None
        yield LearnerRun(opened=opened, executed=nb, kernel=kernel, seconds=seconds,
                         source_before=before["source"], source_after=saved,
                         untracked_before=before["untracked"], untracked_after=_untracked(),
                         findings_before=before["findings"], findings_after=_tree_hash(FINDINGS))
    finally:
        if session is not None:
            try:
                lab.api("DELETE", f"/api/sessions/{session['id']}")
            except (urllib.error.URLError, OSError):
                pass
        # Never leave the book's source changed by this test's save (but never undo someone else's edit).
        if saved is not None and saved != before["source"] and source.read_bytes() == saved:
            source.write_bytes(before["source"])
        if paired_bytes is not None:
            PAIRED.write_bytes(paired_bytes)
        for path, existed in kept.items():
            if not existed:
                _remove(path)
        for path, existed in parents.items():
            if not existed and path.is_dir() and not any(path.iterdir()):
                path.rmdir()


def test_chapter_is_served_as_a_notebook(learner_run: LearnerRun) -> None:
    assert learner_run.opened["type"] == "notebook"
    assert learner_run.opened["format"] == "json"
    # Without a kernelspec, Lab asks "Select Kernel" even with autoStartDefaultKernel. The .py has none
    # (notebook_metadata_filter = "-all"); jupytext adds the kernelspec whose interpreter is the server's own,
    # which `make setup` installs (ipykernel install --sys-prefix), when no paired .ipynb says otherwise.
    kernelspec = learner_run.opened["content"]["metadata"].get("kernelspec")
    assert kernelspec and kernelspec["name"] == "python3", (
        f"the chapter is served without the python3 kernelspec ({kernelspec}); `make setup` installs it")


def test_kernel_is_the_project_environment(learner_run: LearnerRun) -> None:
    expected = (REPO / ".venv" / "bin" / "python").resolve()
    assert Path(learner_run.kernel["executable"]).resolve() == expected, learner_run.kernel


def _errors(nb: nbformat.NotebookNode) -> list[str]:
    return [f"cell {index}: {output.get('ename')}: {output.get('evalue')}"
            for index, cell in enumerate(nb.cells) if cell.cell_type == "code"
            for output in cell.get("outputs", []) if output.get("output_type") == "error"]


def test_chapter_runs_without_errors(learner_run: LearnerRun) -> None:
    errors = _errors(learner_run.executed)
    assert not errors, f"{CHAPTER} failed in the Lab kernel (cwd {learner_run.kernel['cwd']}): {errors}"
    print(f"{NAME} executed in the Lab kernel in {learner_run.seconds:.1f} s")


def test_saving_writes_the_ignored_paired_notebook(learner_run: LearnerRun) -> None:
    assert PAIRED.is_file(), (f"saving did not write {PAIRED.relative_to(REPO)}: jupytext found no pairing "
                              "(notebooks/jupytext.toml must be inside the server's root)")
    ignored = subprocess.run(["git", "check-ignore", "-q", str(PAIRED)], cwd=REPO)
    assert ignored.returncode == 0, f"{PAIRED.relative_to(REPO)} is not ignored by git"
    saved = nbformat.read(PAIRED, as_version=4)
    assert any(cell.get("outputs") for cell in saved.cells if cell.cell_type == "code"), "the .ipynb has no outputs"
    assert learner_run.source_after == learner_run.source_before, (
        f"saving the executed notebook changed the tracked {CHAPTER}")


def test_no_new_untracked_file(learner_run: LearnerRun) -> None:
    new = sorted(learner_run.untracked_after - learner_run.untracked_before)
    assert not new, (f"a Lab run left files git does not ignore: {new} (in a working tree others are editing, "
                     "files they created meanwhile count too)")


def test_book_findings_are_untouched(learner_run: LearnerRun) -> None:
    assert learner_run.findings_after == learner_run.findings_before, "a Lab run changed book/findings/"


def test_outputs_go_to_runs_lab(learner_run: LearnerRun) -> None:
    assert (LAB_RUN / "verdicts.json").is_file(), (
        f"no {LAB_RUN.relative_to(REPO)}/verdicts.json; interactive runs should write there")


def _glued(nb: nbformat.NotebookNode, key: str) -> str | None:
    """The text myst_nb's glue(key, ...) recorded (its papermill record output), as the book shows it."""
    for cell in nb.cells:
        for output in cell.get("outputs", []):
            if output.get("metadata", {}).get("scrapbook", {}).get("name") == key:
                data = output.get("data", {})
                text = data.get("application/papermill.record/text/plain")
                try:
                    return None if text is None else str(ast.literal_eval(text))  # glue stores repr(str)
                except (ValueError, SyntaxError):
                    return text
    return None


def _plain_texts(nb: nbformat.NotebookNode) -> list[str]:
    """Every output a reader sees as text: streams, and text/plain or text/markdown of displays and results."""
    texts = []
    for cell in nb.cells:
        for output in cell.get("outputs", []):
            if output.get("output_type") == "stream":
                texts.append(output["text"])
            elif output.get("output_type") in {"display_data", "execute_result"}:
                texts += [output["data"][kind] for kind in ("text/plain", "text/markdown") if kind in output["data"]]
    return texts


def test_in_words_sentence_is_a_plain_output(learner_run: LearnerRun) -> None:
    summary = _glued(learner_run.executed, "summary_01")
    assert summary, "the run glued no summary_01 text"
    squash = lambda text: re.sub(r"\s+", " ", text).strip()  # noqa: E731
    first_claim = squash(summary).split(" — ")[0]  # "C1 on tiny-llama: supported"
    shown = [text for text in _plain_texts(learner_run.executed) if first_claim in squash(text)
             and squash(summary)[:200] in squash(text)]
    assert shown, (f"the 'In words' sentence ({summary[:120]}…) is only in a glue record, which Lab does not "
                   "show: print it (or display it as Markdown) in a cell tagged remove-cell")


# ---------------------------------------------------------------------------------------------------
# Headless Chromium: the chapter's Lab URL opens the notebook view
# ---------------------------------------------------------------------------------------------------

class _Classes(HTMLParser):
    """Counts the class names of a page's elements."""

    def __init__(self) -> None:
        super().__init__()
        self.counts: Counter[str] = Counter()

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        for key, value in attrs:
            if key == "class" and value:
                self.counts.update(value.split())


def _classes(dom: str) -> Counter[str]:
    parser = _Classes()
    parser.feed(dom)
    return parser.counts


CHROMIUM_FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
                  "--disable-component-update", "--no-first-run", "--disable-sync", "--disable-quic",
                  "--window-size=1400,1000", "--virtual-time-budget=30000"]


def _lab_dom(lab: Lab, path: str, name: str) -> tuple[str, Path]:
    """The DOM of a Lab URL after Chromium ran its scripts (virtual time), and the file it is saved in."""
    binary = shutil.which("chromium") or shutil.which("chromium-browser")
    if not binary:
        pytest.skip("Debian chromium is not installed (`make browser` installs it)")
    url = f"{lab.url}{path}?token={lab.token}"
    with tempfile.TemporaryDirectory() as profile:
        done = subprocess.run([binary, *CHROMIUM_FLAGS, f"--user-data-dir={profile}", "--dump-dom", url],
                              capture_output=True, text=True, timeout=180)
    saved = lab.log.with_name(f"{name}-dom.html")
    saved.write_text(done.stdout + "\n<!-- stderr:\n" + done.stderr[-2000:] + "\n-->\n")
    return done.stdout, saved


def test_landing_page_is_the_reading_order(lab: Lab) -> None:
    dom, saved = _lab_dom(lab, "/", "landing")  # the server root redirects to its default URL, which it prints
    classes = _classes(dom)
    assert "jp-LabShell" in classes, f"JupyterLab did not load in Chromium; DOM in {saved}"
    assert "jp-RenderedMarkdown" in classes and "The chapters as notebooks" in dom, (
        f"`make lab` does not open on notebooks/README.md rendered as Markdown; DOM in {saved}")


def test_chapter_url_opens_the_notebook_view(lab: Lab, learner_run: LearnerRun) -> None:
    sessions_before = {s["id"] for s in lab.api("GET", "/api/sessions")}
    dom, saved = _lab_dom(lab, f"/lab/tree/{CHAPTER}", "chapter")
    classes = _classes(dom)  # of the elements; the page's <style> sheets name every class, so the text won't do
    assert "jp-LabShell" in classes, f"JupyterLab did not load in Chromium; DOM in {saved}"
    assert "jp-FileEditor" not in classes, (
        "the chapter's URL opened the text editor: the default viewer for python files is not 'Jupytext Notebook' "
        f"(etc/jupyterlab/abspos.json, installed by make setup); DOM in {saved}")
    assert "jp-NotebookPanel" in classes, f"the chapter's URL did not open a notebook view; DOM in {saved}"
    assert classes["jp-Cell"] > 10, f"the notebook view shows {classes['jp-Cell']} cells; DOM in {saved}"
    assert "jp-Dialog" not in classes, f"a dialog is open (the 'Select Kernel' dialog?); DOM in {saved}"
    new = [s for s in lab.api("GET", "/api/sessions") if s["id"] not in sessions_before]
    assert any(s["path"] == CHAPTER and s.get("kernel") for s in new), (
        f"opening the chapter started no kernel (sessions: {new})")
