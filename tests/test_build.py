import threading

import pytest

import deeprank
from deeprank import _C


def test_build_info_fields():
    info = deeprank.build_info()
    assert info["version"] == deeprank.__version__
    assert info["simd"] in info["simd_available"]
    assert info["simd_best"] == info["simd_available"][-1]
    assert info["threads"] >= 1
    assert isinstance(info["cuda_compiled"], bool)
    assert info["cuda_devices"] >= 0


def test_thread_setting_round_trips():
    before = deeprank.get_num_threads()
    try:
        deeprank.set_num_threads(3)
        assert deeprank.get_num_threads() == 3
        assert deeprank.build_info()["threads"] == 3
    finally:
        deeprank.set_num_threads(before)


@pytest.mark.parametrize("bad", [0, -2])
def test_thread_setting_rejects_non_positive(bad):
    with pytest.raises(ValueError, match="threads must be"):
        deeprank.set_num_threads(bad)


def test_thread_setting_rejects_non_int():
    with pytest.raises(TypeError, match="threads must be an int"):
        deeprank.set_num_threads(2.5)


def test_isa_can_be_forced_and_restored():
    try:
        for name in _C.available_isas():
            _C.set_isa(name)
            assert _C.active_isa() == name
        with pytest.raises(ValueError, match="isa must be one of"):
            _C.set_isa("sse9")
    finally:
        _C.set_isa("auto")
    assert _C.active_isa() == _C.best_isa()


def test_import_from_threads():
    errors = []

    def work():
        try:
            deeprank.build_info()
        except Exception as e:  # pragma: no cover - reported below
            errors.append(e)

    threads = [threading.Thread(target=work) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []
