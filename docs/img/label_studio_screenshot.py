"""Make docs/img/label_studio_*.png: synthetic data, a small fine-tuned model, `sonossl select
--label-studio --model`, a real Label Studio (.venv-labelstudio) with the tasks imported, and the
labelling screen in headless Chromium with the model's guess pre-filled.

    .venv/bin/python docs/img/label_studio_screenshot.py WORK_DIR NODE_MODULES_DIR

About 4 minutes on 2 cores. Nothing leaves 127.0.0.1.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

HERE = Path(__file__).resolve().parent
REPO = HERE.parents[1]
TOKEN, EMAIL, PASSWORD, PORT = "docs-screenshot-token-0123456789", "annotator@example.com", "not-a-secret-1", 18931


def sonossl(*argv) -> None:
    subprocess.run([sys.executable, "-m", "sonossl", *map(str, argv)], check=True)


def api(method: str, path: str, body=None):
    req = urllib.request.Request(f"http://127.0.0.1:{PORT}{path}", method=method,
                                 data=None if body is None else json.dumps(body).encode(),
                                 headers={"Authorization": f"Token {TOKEN}", "Content-Type": "application/json"})
    with urllib.request.urlopen(req, timeout=120) as r:
        return json.loads(r.read() or b"null")


def prepare(work: Path) -> Path:
    sonossl("synth", "--out", work / "synth", "--videos", 6, "--frames", 16, "--labelled", "40,10,10")
    sonossl("ingest", work / "synth" / "videos", "--out", work / "frames.h5", "--size", 64, "--frame-skip", 2, "--quiet")
    sonossl("evaluate", "--labels", work / "synth" / "labelled", "--init", "random", "--backbone", "resnet18",
            "--protocol", "finetune", "--fractions", 100, "--seeds", 0, "--epochs", 6, "--image-size", 64,
            "--batch-size", 32, "--accelerator", "cpu", "--out", work / "eval", "--quiet")
    sel = work / "sel"
    sonossl("select", "--frames", work / "frames.h5", "--budget", 12, "--map", "pca", "--out", sel, "--label-studio",
            "--model", work / "eval" / "random_finetune_f100_s0")
    return sel


def main(work: Path, node_modules: Path) -> None:
    sel = prepare(work)
    env = {**os.environ, "LABEL_STUDIO_BASE_DATA_DIR": str(work / "ls"), "LABEL_STUDIO_LOCAL_FILES_SERVING_ENABLED": "true",
           "LABEL_STUDIO_LOCAL_FILES_DOCUMENT_ROOT": str(sel), "LABEL_STUDIO_USERNAME": EMAIL,
           "LABEL_STUDIO_PASSWORD": PASSWORD, "LABEL_STUDIO_USER_TOKEN": TOKEN, "LABEL_STUDIO_ENABLE_LEGACY_API_TOKEN": "true",
           "LATEST_VERSION_CHECK": "false", "COLLECT_ANALYTICS": "false", "SENTRY_DSN": "", "FRONTEND_SENTRY_DSN": ""}
    proc = subprocess.Popen([str(REPO / ".venv-labelstudio" / "bin" / "label-studio"), "start", "--internal-host",
                             "127.0.0.1", "--port", str(PORT), "--no-browser"], env=env, start_new_session=True,
                            stdout=open(work / "ls.log", "w"), stderr=subprocess.STDOUT)
    try:
        for _ in range(240):
            try:
                api("GET", "/api/projects")
                break
            except OSError:
                time.sleep(1)
        p = api("POST", "/api/projects", {"title": "Fetal cardiac planes, round 1",
                                          "label_config": (sel / "label-studio" / "label_config.xml").read_text()})
        api("POST", "/api/storages/localfiles", {"project": p["id"], "title": "frames", "path": str(sel / "frames"),
                                                 "use_blob_urls": True})
        api("POST", f"/api/projects/{p['id']}/import", json.loads((sel / "label-studio" / "tasks.json").read_text()))
        tasks = api("GET", f"/api/tasks?project={p['id']}&page_size=100")["tasks"]
        node = {**os.environ, "NODE_PATH": str(node_modules)}
        url = f"http://127.0.0.1:{PORT}"
        subprocess.run(["node", str(HERE / "label_studio_screenshot.cjs"), url, EMAIL, PASSWORD,
                        f"/projects/{p['id']}/data?task={tasks[0]['id']}", str(HERE / "label_studio_task.png")],
                       env=node, check=True)
        subprocess.run(["node", str(HERE / "label_studio_screenshot.cjs"), url, EMAIL, PASSWORD,
                        f"/projects/{p['id']}/data", str(HERE / "label_studio_tasks.png")], env=node, check=True)
    finally:
        os.killpg(proc.pid, signal.SIGTERM)


if __name__ == "__main__":
    main(Path(sys.argv[1]), Path(sys.argv[2]))
