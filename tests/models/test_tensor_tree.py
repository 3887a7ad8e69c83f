"""deeprank.models.tensor_tree: a training state through one safetensors file, bit for bit, no pickle."""

import math
import pickle
import random

import numpy as np
import pytest
import torch
from safetensors.torch import save

from deeprank.models.tensor_tree import decode_tree, encode_tree, tree_from_bytes, tree_to_bytes


def same(a, b):
    """Deep equality telling tuples from lists and numpy scalars from floats; tensors bit-exact."""
    assert type(a) is type(b), (a, b)
    if isinstance(a, torch.Tensor):
        assert a.dtype == b.dtype and a.shape == b.shape and torch.equal(a, b)
    elif isinstance(a, np.ndarray):
        assert a.dtype == b.dtype and np.array_equal(a, b)
    elif isinstance(a, dict):
        assert list(a) == list(b)
        for k in a:
            same(a[k], b[k])
    elif isinstance(a, (list, tuple)):
        assert len(a) == len(b)
        for x, y in zip(a, b, strict=True):
            same(x, y)
    elif isinstance(a, float) and math.isnan(a):
        assert math.isnan(b)
    else:
        assert a == b


def test_a_training_like_state_round_trips_exactly():
    model = torch.nn.Linear(3, 2)
    opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    model(torch.randn(4, 3)).sum().backward()
    opt.step()
    rng = random.Random(7)
    rng.random()
    gen = np.random.default_rng(3)
    state = {
        "optimizer": opt.state_dict(),  # integer keys, 0-dim tensors
        "torch_rng": torch.get_rng_state(),
        "python_rng": rng.getstate(),  # a tuple of 625 ints
        "numpy_rng": gen.bit_generator.state,  # 128-bit integers
        "order": gen.permutation(10),
        "heap": [(0.1 + 0.2, 3, "a"), (1e-300, -4, "b")],
        "scalars": [np.float32(0.1), np.int64(-5), True, None, float("nan"), float("inf")],
        "labels": {np.int64(2): "two", (1, 2): "pair"},
        "__reserved": 1,
        "seen": {1, 2, 3},
        "empty": torch.empty(0, 3, dtype=torch.float64),
    }
    back = tree_from_bytes(tree_to_bytes(state))
    same(back, {**state, "seen": back["seen"]})
    assert back["seen"] == {1, 2, 3}
    opt.load_state_dict(back["optimizer"])
    restored = random.Random()
    restored.setstate(back["python_rng"])
    assert restored.random() == rng.random()


def test_tensors_are_copied_out_of_shared_or_strided_storage():
    base = torch.arange(12.0).reshape(3, 4)
    json_tree, tensors = encode_tree({"a": base, "b": base.t(), "c": base[1]})
    back = decode_tree(json_tree, tensors)
    for key, value in {"a": base, "b": base.t(), "c": base[1]}.items():
        assert torch.equal(back[key], value)
    assert tree_from_bytes(tree_to_bytes({"a": base, "b": base.t()}))["b"].shape == (4, 3)


@pytest.mark.parametrize("value", [object(), np.array([object()]), lambda: 0])
def test_what_needs_pickle_is_refused_when_writing(value):
    with pytest.raises(TypeError, match="without pickle"):
        tree_to_bytes({"x": value})


def test_foreign_and_damaged_files_are_refused_when_reading():
    good = tree_to_bytes({"step": 3, "w": torch.ones(4)})
    cases = {
        "a pickle": pickle.dumps({"step": 3}),
        "empty": b"",
        "truncated header": good[:20],
        "truncated data": good[:-3],
        "plain safetensors": save({"w": torch.ones(2)}),
    }
    for name, data in cases.items():
        with pytest.raises(ValueError, match="STATE"):
            tree_from_bytes(data, f"STATE ({name})")
    # the JSON sits escaped inside the safetensors header: point its tensor reference elsewhere
    bad_ref = good.replace(b'{\\"__tensor__\\":\\"t0\\"}', b'{\\"__tensor__\\":\\"t9\\"}')
    assert bad_ref != good
    with pytest.raises(ValueError, match="missing tensor"):
        tree_from_bytes(bad_ref)
