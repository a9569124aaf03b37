"""The labelling round trip against a real Label Studio server on 127.0.0.1.

``sonossl select --label-studio --model`` -> a project made from label_config.xml, tasks.json
imported, the images fetched over HTTP as the labelling screen fetches them, the model's guesses
shown as predictions -> annotations submitted through the API (one frame skipped, one with two
disagreeing annotators, the rest with each clip's true class) -> the JSON export -> ``sonossl
labels import`` -> ``sonossl evaluate`` on the labelled set.

Label Studio pins its own numpy (2.2.6 for 1.23.2, sonossl's venv has 2.4) and Django stack, so it
runs from its own virtual environment (``.venv-labelstudio/``, made by ``.ci/run`` from pyproject's
``[labelstudio]`` pins; ``SONOSSL_LABEL_STUDIO`` may name another ``label-studio`` executable) and the test
talks to it over HTTP only. Without it the test is skipped with one line. About 40 s on 2 busy
cores (the server's start and the model's fine-tuning are most of it).
"""

from __future__ import annotations

import base64
import csv
import json
import os
import signal
import socket
import subprocess
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest
from conftest import TRUTH, select_argv

from sonossl.cli import main

REPO = Path(__file__).resolve().parents[2]
TOKEN = "sonossl-test-token-0123456789"


def label_studio() -> Path:
    exe = Path(os.environ.get("SONOSSL_LABEL_STUDIO") or REPO / ".venv-labelstudio" / "bin" / "label-studio")
    if not exe.is_file():
        pytest.skip(f"label-studio not installed ({exe} missing): .ci/run installs it")
    return exe


class Server:
    """A Label Studio on 127.0.0.1:port; ``api(method, path, body)`` -> the decoded JSON answer."""

    def __init__(self, port: int):
        self.url = f"http://127.0.0.1:{port}"

    def get(self, path: str) -> bytes:
        req = urllib.request.Request(self.url + path, headers={"Authorization": f"Token {TOKEN}"})
        with urllib.request.urlopen(req, timeout=60) as r:
            return r.read()

    def api(self, method: str, path: str, body=None):
        data = None if body is None else json.dumps(body).encode()
        req = urllib.request.Request(self.url + path, data=data, method=method,
                                     headers={"Authorization": f"Token {TOKEN}", "Content-Type": "application/json"})
        try:
            with urllib.request.urlopen(req, timeout=120) as r:
                text = r.read()
        except urllib.error.HTTPError as exc:
            raise AssertionError(f"{method} {path}: {exc.code} {exc.read()[:500]!r}") from None
        return json.loads(text) if text else None


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture
def server(tmp_path) -> Server:
    """A fresh server: SQLite and media in tmp_path/ls, an admin with a token, local files served
    from tmp_path/sel (the document root: the selection folder), no call outside 127.0.0.1
    (version check and analytics off)."""
    exe, port = label_studio(), free_port()
    env = {**os.environ, "LABEL_STUDIO_BASE_DATA_DIR": str(tmp_path / "ls"), "LABEL_STUDIO_LOCAL_FILES_SERVING_ENABLED": "true",
           "LABEL_STUDIO_LOCAL_FILES_DOCUMENT_ROOT": str(tmp_path / "sel"), "LABEL_STUDIO_USERNAME": "admin@example.com",
           "LABEL_STUDIO_PASSWORD": "not-a-secret-1", "LABEL_STUDIO_USER_TOKEN": TOKEN,
           "LABEL_STUDIO_ENABLE_LEGACY_API_TOKEN": "true", "LATEST_VERSION_CHECK": "false", "COLLECT_ANALYTICS": "false",
           "SENTRY_DSN": "", "FRONTEND_SENTRY_DSN": ""}
    log = open(tmp_path / "label-studio.log", "w")
    proc = subprocess.Popen([str(exe), "start", "--internal-host", "127.0.0.1", "--port", str(port), "--no-browser"],
                            env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    s = Server(port)
    try:
        deadline = time.time() + 240
        while True:
            try:
                s.api("GET", "/api/projects")
                break
            except (OSError, AssertionError):
                if proc.poll() is not None or time.time() > deadline:
                    raise AssertionError(f"label-studio did not start: {(tmp_path / 'label-studio.log').read_text()[-2000:]}")
                time.sleep(1)
        yield s
    finally:
        os.killpg(proc.pid, signal.SIGTERM)  # the server and the workers it started
        try:
            proc.wait(30)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
        log.close()


def choice(cls: str) -> list[dict]:
    return [{"from_name": "plane", "to_name": "image", "type": "choices", "value": {"choices": [cls]}}]


def make_project(s: Server, sel: Path) -> tuple[int, list[dict]]:
    """A project from label_config.xml, a local-files storage over frames/, tasks.json imported; its tasks."""
    project = s.api("POST", "/api/projects", {"title": "planes round 1",
                                              "label_config": (sel / "label-studio" / "label_config.xml").read_text()})
    s.api("POST", "/api/storages/localfiles", {"project": project["id"], "title": "frames", "path": str(sel / "frames"),
                                               "use_blob_urls": True})
    tasks = json.loads((sel / "label-studio" / "tasks.json").read_text())
    s.api("POST", f"/api/projects/{project['id']}/import", tasks)
    got = s.api("GET", f"/api/tasks?project={project['id']}&page_size=100&fields=all")["tasks"]
    return project["id"], sorted(got, key=lambda t: t["data"]["rank"])


def test_round_trip_through_a_real_label_studio(server, pool, trained, tmp_path, capsys):
    sel = tmp_path / "sel"
    assert main(select_argv(pool, sel, "--model", trained / "model.pt")) == 0
    pid, tasks = make_project(server, sel)
    assert len(tasks) == 12
    for t in tasks:  # each image loads as the labelling screen loads it, byte for byte
        assert server.get(t["data"]["image"]) == (sel / t["data"]["png"]).read_bytes()
    preds = server.api("GET", f"/api/predictions?project={pid}")
    assert len(preds) == 12 and {p["model_version"] for p in preds} == {trained.name}
    assert all(p["result"][0]["value"]["choices"][0] in {"3VV", "4CH", "LVOT"} and 0 < p["score"] <= 1 for p in preds)
    other = server.api("POST", "/api/users/", {"username": "annotator2", "email": "annotator2@example.com",
                                               "password": "not-a-secret-2"})
    skipped, disputed = tasks[0], tasks[1]
    server.api("POST", f"/api/tasks/{skipped['id']}/annotations/", {"result": [], "was_cancelled": True})
    truth = TRUTH[disputed["data"]["clip_id"]]
    wrong = next(c for c in ("3VV", "4CH", "LVOT") if c != truth)
    server.api("POST", f"/api/tasks/{disputed['id']}/annotations/", {"result": choice(truth)})
    server.api("POST", f"/api/tasks/{disputed['id']}/annotations/", {"result": choice(wrong), "completed_by": other["id"]})
    for t in tasks[2:]:
        server.api("POST", f"/api/tasks/{t['id']}/annotations/", {"result": choice(TRUTH[t["data"]["clip_id"]])})
    export = tmp_path / "export.json"
    export.write_bytes(server.get(f"/api/projects/{pid}/export?exportType=JSON&download_all_tasks=true"))

    planes = tmp_path / "planes"
    assert main(["labels", "import", str(export), "--selection", str(sel), "--out", str(planes),
                 "--valid", "0.25", "--test", "0.25"]) == 0
    ledger = list(csv.DictReader(open(planes / "labels_import.csv")))
    status = {int(r["task_id"]): r["status"] for r in ledger}
    assert len(ledger) == 12 and status[skipped["id"]] == "skipped" and status[disputed["id"]] == "disagreement"
    assert sorted(status.values()).count("imported") == 10
    split_of = {}
    for split in ("train", "valid", "test"):
        for r in csv.DictReader(open(planes / f"{split}.csv")):
            row = next(x for x in ledger if x["image_path"] == r["image_path"])
            assert TRUTH[row["clip_id"]] == r["class"] and (planes / r["image_path"]).is_file()
            assert split_of.setdefault(row["clip_id"], split) == split  # no clip in two splits
    assert main(["evaluate", "--labels", str(planes), "--init", "random", "--backbone", "resnet18", "--protocol", "linear",
                 "--fractions", "100", "--seeds", "0", "--linear-epochs", "2", "--image-size", "32", "--batch-size", "8",
                 "--accelerator", "cpu", "--out", str(tmp_path / "eval"), "--quiet"]) == 0
    rows = list(csv.DictReader(open(tmp_path / "eval" / "results.csv")))
    assert len(rows) == 1 and 0 <= float(rows[0]["macro_f1"]) <= 1 and int(rows[0]["n_train"]) >= 3
