import threading

import pytest
import torch

import deeprank
from deeprank import _C
from deeprank._build import cuda_module


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


def test_cuda_module_imports_and_reports_devices_without_crashing():
    mod = cuda_module()
    info = deeprank.build_info()
    assert info["cuda_compiled"] == (mod is not None)
    assert isinstance(info["cuda_devices"], int) and info["cuda_devices"] >= 0
    if mod is None:
        assert info["cuda_devices"] == 0
        return
    try:
        count = mod.device_count()
    except RuntimeError as e:  # no driver or no GPU: a clear message, and build_info says 0
        assert str(e)
        assert info["cuda_devices"] == 0
    else:
        assert count == info["cuda_devices"]
    assert mod.lrn_max_size >= 5


@pytest.mark.cuda
@pytest.mark.skipif(
    not torch.cuda.is_available() or cuda_module() is None, reason="needs torch with a GPU and _cuda"
)
def test_cuda_module_sees_the_gpu_torch_sees():
    """Where torch has a GPU, deeprank._cuda must see it too (else every GPU test would skip quietly).

    The usual cause is a driver older than the CUDA runtime deeprank._cuda was built with.
    """
    try:
        count = cuda_module().device_count()
    except RuntimeError as e:
        pytest.fail(f"deeprank._cuda cannot use the GPU torch sees: {e}")
    assert count == torch.cuda.device_count()
