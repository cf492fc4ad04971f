"""workers="auto" and the validation of worker counts for face analysis."""

import os

import numpy as np
import pytest

from faceprompt.errors import AnalysisOptionError, FacepromptError
from faceprompt.faces import FaceAnalyzer, check_workers, resolve_workers, usable_cores


@pytest.fixture
def four_cores(monkeypatch):
    """This process may run on cores 0, 1, 2 and 5 (as under ``taskset -c 0-2,5``) of an 8-core machine."""
    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: {0, 1, 2, 5}, raising=False)
    monkeypatch.setattr(os, "cpu_count", lambda: 8)


@pytest.mark.parametrize("backend", ["dlib", "insightface"])
@pytest.mark.parametrize("workers", [1, 2, 7])
def test_a_given_count_is_used_as_given(backend, workers, four_cores):
    assert resolve_workers(workers, backend) == workers


def test_auto_gives_dlib_one_process_per_usable_core(four_cores):
    assert usable_cores() == 4  # the affinity mask, not the machine's 8 cores
    assert resolve_workers("auto", "dlib") == 4


def test_auto_gives_insightface_one_process(four_cores):
    # ONNX Runtime threads each model over every core itself; a second process would only compete for them.
    assert resolve_workers("auto", "insightface") == 1


def test_usable_cores_falls_back_to_the_core_count_without_an_affinity_call(monkeypatch):
    monkeypatch.delattr(os, "sched_getaffinity", raising=False)
    monkeypatch.setattr(os, "cpu_count", lambda: 6)
    assert usable_cores() == 6
    assert resolve_workers("auto", "dlib") == 6
    monkeypatch.setattr(os, "cpu_count", lambda: None)  # undeterminable
    assert usable_cores() == 1


def test_usable_cores_on_this_machine():
    expected = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    assert usable_cores() == expected


@pytest.mark.parametrize("workers", [0, -2, True, False, 1.5, 2.0, "2", "AUTO", "", None])
def test_bad_worker_counts_are_refused_with_the_rule_and_the_fix(workers):
    with pytest.raises(AnalysisOptionError) as caught:
        resolve_workers(workers, "dlib")
    assert isinstance(caught.value, FacepromptError) and isinstance(caught.value, ValueError)
    message = str(caught.value)
    assert f"got {workers!r}" in message
    assert "integer >= 1 or 'auto'" in message and "use 'auto'" in message


def test_check_workers_validates_without_resolving(four_cores):
    assert check_workers("auto") == "auto" and check_workers(3) == 3
    with pytest.raises(AnalysisOptionError, match="got 0"):
        check_workers(0)


def test_analyze_files_refuses_bad_options_when_called_before_reading_any_file(dlib_analyzer, tmp_path):
    missing = [tmp_path / "not-there.png"]
    with pytest.raises(AnalysisOptionError, match="workers must be an integer >= 1 or 'auto', got 0"):
        dlib_analyzer.analyze_files(missing, workers=0)  # no iteration: the call itself raises
    with pytest.raises(AnalysisOptionError, match="batch_size must be an integer >= 1, got 0"):
        dlib_analyzer.analyze_files(missing, batch_size=0)


def test_analyze_files_auto_uses_a_pool_of_one_worker_per_core_for_dlib(
    dlib_analyzer, astronaut_path, group_path, monkeypatch
):
    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: {0, 1}, raising=False)
    pools = []
    make_pool = FaceAnalyzer.worker_pool

    def recording_pool(analyzer, workers):
        pools.append(workers)
        return make_pool(analyzer, workers)

    monkeypatch.setattr(FaceAnalyzer, "worker_pool", recording_pool)
    paths = [astronaut_path, group_path, astronaut_path]
    auto = list(dlib_analyzer.analyze_files(paths, workers="auto", batch_size=1))
    assert pools == [2]
    one = list(dlib_analyzer.analyze_files(paths, workers=1, batch_size=1))
    assert pools == [2]  # one worker: analysed in this process, no pool
    assert [len(result.faces) for result in auto] == [len(result.faces) for result in one] == [1, 6, 1]
    for got, expected in zip(auto, one):
        assert [face.bbox.tolist() for face in got.faces] == [face.bbox.tolist() for face in expected.faces]
        for got_face, expected_face in zip(got.faces, expected.faces):
            np.testing.assert_allclose(got_face.embedding, expected_face.embedding, atol=1e-6)


def test_dlib_workers_fork_and_answer(dlib_analyzer):
    assert dlib_analyzer.worker_start_method == "fork"
    with dlib_analyzer.worker_pool(2) as pool:
        pids = set(pool.map(_pid, range(4)))
    assert os.getpid() not in pids and 1 <= len(pids) <= 2


def _pid(_: int) -> int:
    return os.getpid()
