"""The one exception type that means "the user's input is wrong".

The CLI turns it into one line on stderr and exit status 2 (a traceback only with --debug).
Every message names the file or field and what was expected.
"""


class SonosslError(Exception):
    """Bad input, a missing file, a refused overwrite: anything the user can fix."""


class DivergenceError(SonosslError):
    """A pretraining's loss or weights became NaN/inf: the run stops (its last checkpoint is from
    before). The learning-rate sweep counts such a candidate as diverged instead of stopping."""
