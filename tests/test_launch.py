"""sonossl.launch: the requeueable payload and the launcher checks (the jobs themselves run
through submitit's local executor in tests/methods/test_multinode.py and tests/study)."""

from __future__ import annotations

import pickle

import pytest

from sonossl.errors import SonosslError
from sonossl.launch import JobShape, Requeueable, check_launcher


def _add(a: int, b: int) -> int:
    return a + b


def test_a_requeued_payload_is_the_same_call_and_survives_pickling():
    job = pickle.loads(pickle.dumps(Requeueable(_add, 2, 3)))  # submitit pickles the payload into the job folder
    assert job() == 5
    again = job.checkpoint()  # what submitit requeues on preemption or time-out
    assert isinstance(again.function, Requeueable)
    assert again.function.fn is _add and again.function.args == (2, 3)
    assert again.function() == 5


def test_launchers_are_checked_before_anything_is_submitted():
    with pytest.raises(SonosslError, match="expected one of"):
        check_launcher("kubernetes")
    with pytest.raises(SonosslError, match="one node"):
        check_launcher("submitit-local", JobShape(nodes=2))
    check_launcher("submitit-local", JobShape(nodes=1))
