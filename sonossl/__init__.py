"""sonossl: self-supervised learning on ultrasound scan videos.

The Python API (:mod:`sonossl.api`) is available at the top level: ``sonossl.synth``,
``sonossl.ingest``, ``sonossl.pretrain``, ``sonossl.evaluate``, ``sonossl.run_study``,
``sonossl.load_study``, ``sonossl.report``, ``sonossl.predict``, ``sonossl.export``,
``sonossl.embed`` and ``sonossl.demo`` (loaded on first use, so ``import sonossl`` stays light).
"""

__version__ = "0.1.0"

API = ("synth", "ingest", "pretrain", "evaluate", "run_study", "load_study", "report", "predict", "export", "embed", "demo")
__all__ = ["__version__", "CLASSES_DEFAULT", *API]


def __getattr__(name: str):
    if name == "CLASSES_DEFAULT":  # the planes of the built-in synthetic data; their one owner is its scene
        from sonossl.data.synthetic.scene import CLASSES

        return CLASSES
    if name in API:
        from sonossl import api

        return getattr(api, name)
    raise AttributeError(f"module 'sonossl' has no attribute {name!r}")
