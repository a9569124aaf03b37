"""matplotlib for sonossl's figures: headless, and every label plain text.

Class, study and init names come from the user's files. matplotlib reads ``$...$`` in a label
as mathtext and fails on what it cannot parse (a class named ``4CH $x^`` ended a run in a
traceback), so mathtext is off: a label is drawn exactly as written.
"""

from __future__ import annotations


def pyplot():
    """``matplotlib.pyplot`` on the Agg backend, with mathtext parsing off."""
    import matplotlib

    matplotlib.use("Agg")
    matplotlib.rcParams["text.parse_math"] = False
    import matplotlib.pyplot as plt

    return plt
