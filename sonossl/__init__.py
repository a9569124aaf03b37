"""sonossl: self-supervised learning on ultrasound scan videos.

The Python API (:mod:`sonossl.api`) is available at the top level: ``sonossl.synth``,
``sonossl.ingest``, ``sonossl.pretrain``, ``sonossl.evaluate``, ``sonossl.run_study``,
``sonossl.load_study``, ``sonossl.report``, ``sonossl.predict``, ``sonossl.export``,
``sonossl.embed`` and ``sonossl.demo`` (loaded on first use, so ``import sonossl`` stays light).
"""

__version__ = "0.1.0"

CLASSES_DEFAULT = ("4CH", "LVOT", "RVOT", "3VV", "3VT")

API = ("synth", "ingest", "pretrain", "evaluate", "run_study", "load_study", "report", "predict", "export", "embed", "demo")
__all__ = ["__version__", "CLASSES_DEFAULT", *API]


def __getattr__(name: str):
    if name in API:
        from sonossl import api

        return getattr(api, name)
    raise AttributeError(f"module 'sonossl' has no attribute {name!r}")
