"""``sonossl select --label-studio``: the chosen frames as a Label Studio project's input.

Written into ``OUT/label-studio/`` beside ``to_label.csv`` (in the same unfinished folder, so
all or nothing is published):

- ``tasks.json``: one task per chosen frame. ``data`` holds the image's address, the store's
  pseudonymous ``clip_id``, the ``frame_index``, the ``rank`` and ``png`` (the frame's path
  relative to OUT, which ``sonossl labels import`` reads back); nothing else, so no source path
  or patient-derived value goes into a task. The image is ``/data/local-files/?d=frames/NAME.png``
  (Label Studio's local-file serving with OUT as ``LABEL_STUDIO_LOCAL_FILES_DOCUMENT_ROOT``), or
  ``PREFIX/frames/NAME.png`` with ``--image-url PREFIX``. With ``--model`` a task carries one
  prediction: the model's top class, its probability as ``score``, ``model_version`` the model's
  name; Label Studio shows it pre-filled.
- ``label_config.xml``: an image and a single choice over the classes (``--label-classes``, else
  the model's).
- ``README.txt``: how to start Label Studio and import the tasks.

Probabilities come from :mod:`sonossl.infer.predict` (``read_input`` reads each written PNG as
a labelled image is read, ``frame_probabilities`` batches them), so they are what ``sonossl
predict`` gives for that PNG.
"""

from __future__ import annotations

import json
from pathlib import Path
from xml.sax.saxutils import quoteattr

from sonossl.config import SelectConfig
from sonossl.errors import SonosslError

FOLDER = "label-studio"
FROM_NAME, TO_NAME = "plane", "image"  # the control and object names of label_config.xml
LOCAL_FILES = "/data/local-files/?d="


def label_config(classes: list[str]) -> str:
    """A Label Studio labelling config: the image and one single choice over ``classes``."""
    choices = "\n".join(f"    <Choice value={quoteattr(c)}/>" for c in classes)
    return (f'<View>\n  <Image name="{TO_NAME}" value="$image" zoom="true"/>\n'
            f'  <Choices name="{FROM_NAME}" toName="{TO_NAME}" choice="single" showInline="true" required="true">\n'
            f"{choices}\n  </Choices>\n</View>\n")


def model_name(path: Path) -> str:
    """An evaluate run's folder name (``pretrained_finetune_f10_s0``) for its model.pt, else the file's stem."""
    return path.parent.name if path.name == "model.pt" else path.stem


def image_address(png: str, prefix: str | None) -> str:
    return f"{prefix.rstrip('/')}/{png}" if prefix else LOCAL_FILES + png


def readme(classes: list[str], prefix: str | None, model: str | None) -> str:
    serve = (f"The images are addressed under {prefix}/frames/: serve the frames/ folder there."
             if prefix else
             "The images are addressed as Label Studio's local files. Start it with\n"
             "  LABEL_STUDIO_LOCAL_FILES_SERVING_ENABLED=true \\\n"
             "  LABEL_STUDIO_LOCAL_FILES_DOCUMENT_ROOT=<this selection folder, the parent of label-studio/> \\\n"
             "  label-studio start\n"
             "and in the project's Settings > Cloud Storage add a Local Files source storage whose path is\n"
             "<this selection folder>/frames (do not sync it: the tasks come from tasks.json).")
    guess = f"Each task is pre-filled with the guess of model {model}.\n" if model else ""
    return ("Label Studio input written by `sonossl select --label-studio`.\n\n"
            f"{serve}\n\n"
            "1. Create a project; Settings > Labeling Interface > Code: paste label_config.xml\n"
            f"   (a single choice over {', '.join(classes)}).\n"
            "2. Import tasks.json (Import > Upload Files).\n"
            f"{guess}"
            "3. Label; skip a frame you cannot tell. Then Export > JSON and run\n"
            "   sonossl labels import EXPORT.json --selection <this selection folder> --out planes/\n")


class TaskWriter:
    """Checks the options and loads the model before anything is written; ``__call__(folder, rows)``
    writes ``folder/label-studio/`` for ``to_label.csv``'s rows (``run_select``'s ``extra``)."""

    def __init__(self, s: SelectConfig):
        from sonossl.downstream.modelfile import load_model

        self.model = load_model(s.model, s.device, "32-true") if s.model is not None else None
        self.classes = list(s.label_classes) or (self.model.class_names if self.model else [])
        if not self.classes:
            raise SonosslError("--label-studio: no classes to label; give --label-classes A,B,... or a --model")
        if len(set(self.classes)) != len(self.classes):
            raise SonosslError(f"--label-classes: a class named twice in {','.join(self.classes)}")
        if self.model and set(self.model.class_names) - set(self.classes):
            raise SonosslError(f"{s.model}: the model's classes {','.join(self.model.class_names)} are not all in "
                               f"--label-classes {','.join(self.classes)}; expected the classes the model predicts")
        self.prefix, self.batch_size = s.image_url, s.batch_size
        self.version = model_name(self.model.path) if self.model else None

    def predictions(self, folder: Path, rows: list[dict]) -> list[dict | None]:
        if self.model is None:
            return [None] * len(rows)
        import numpy as np

        from sonossl.infer.predict import frame_probabilities, read_input

        frames = np.concatenate([read_input(folder / r["png"], self.model.image_size).frames for r in rows])
        probs = frame_probabilities(self.model, frames, self.batch_size)
        out = []
        for p in probs:
            k = int(p.argmax())
            out.append({"model_version": self.version, "score": round(float(p[k]), 5),
                        "result": [{"from_name": FROM_NAME, "to_name": TO_NAME, "type": "choices",
                                    "value": {"choices": [self.model.class_names[k]]}}]})
        return out

    def __call__(self, folder: Path, rows: list[dict]) -> None:
        tasks = []
        for r, pred in zip(rows, self.predictions(folder, rows)):
            task = {"data": {"image": image_address(r["png"], self.prefix), "clip_id": r["clip_id"],
                             "frame_index": r["frame_index"], "rank": r["rank"], "png": r["png"]}}
            if pred is not None:
                task["predictions"] = [pred]
            tasks.append(task)
        ls = folder / FOLDER
        ls.mkdir()
        (ls / "tasks.json").write_text(json.dumps(tasks, indent=1))
        (ls / "label_config.xml").write_text(label_config(self.classes))
        (ls / "README.txt").write_text(readme(self.classes, self.prefix, self.version))


def run_select_label_studio(s: SelectConfig, overwrite: bool = False) -> dict:
    """``run_select`` with ``label-studio/`` written too when ``s.label_studio``."""
    from sonossl.select.command import run_select

    if not s.label_studio:
        if s.model is not None or s.label_classes or s.image_url:
            raise SonosslError("--model, --label-classes and --image-url are options of --label-studio; add --label-studio")
        return run_select(s, overwrite)
    return run_select(s, overwrite, extra=TaskWriter(s))
