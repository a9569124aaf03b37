"""The one progress bar of the long-running commands (``ingest``, ``predict``): rich, on stderr.

``with progress_bar("ingest", enabled) as bar: task = bar.add_task("ingest", total=n); bar.advance(task)``.
"""

from __future__ import annotations


def progress_bar(label: str, enabled: bool = True):
    """A rich ``Progress`` with the label, a bar, done/total and the time remaining; a no-op
    when ``enabled`` is false (``--quiet``)."""
    from rich.console import Console
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

    return Progress(TextColumn(label), BarColumn(), MofNCompleteColumn(), TimeRemainingColumn(),
                    console=Console(stderr=True), disable=not enabled, transient=False)
