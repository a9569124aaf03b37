"""sonossl: self-supervised learning on ultrasound scan videos."""

__version__ = "0.1.0"

CLASSES_DEFAULT = ("4CH", "LVOT", "RVOT", "3VV", "3VT")
