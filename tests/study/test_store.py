"""The results store: concurrent writers, first record kept, failures cleared by a success."""

from __future__ import annotations

import multiprocessing as mp

from sonossl.study.store import ResultsStore


def _writer(path: str, who: int, n: int) -> None:
    store = ResultsStore(path)
    for i in range(n):
        store.record(f"eval/{who}/{i}", "EvalUnit", {"who": who, "i": i}, 0.1)
        store.record("eval/shared", "EvalUnit", {"who": who}, 0.1)  # both write the same key
    store.close()


def test_concurrent_writers_lose_nothing_and_a_key_is_recorded_once(tmp_path):
    path = str(tmp_path / "study.db")
    ctx = mp.get_context("spawn")
    procs = [ctx.Process(target=_writer, args=(path, w, 150)) for w in range(3)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(120)
        assert p.exitcode == 0
    store = ResultsStore(path)
    rows = store.rows()
    assert len(rows) == 3 * 150 + 1
    assert rows["eval/1/149"] == {"who": 1, "i": 149}
    assert sorted(set(store.walls().values())) == [0.1] and len(store.walls()) == 3 * 150 + 1


def test_first_record_wins_and_success_clears_failure(tmp_path):
    store = ResultsStore(tmp_path / "study.db")
    store.fail("eval/a", "boom")
    assert store.failures() == {"eval/a": "boom"}
    store.record("eval/a", "EvalUnit", {"v": 1}, 1.0)
    store.record("eval/a", "EvalUnit", {"v": 2}, 1.0)
    assert store.rows("EvalUnit") == {"eval/a": {"v": 1}} and store.failures() == {}
    assert store.completed() == {"eval/a"}
