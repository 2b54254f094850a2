"""The memory check (memory.py): each family's size counted without building the model is a
floor of what Keras builds, and spaces whose largest model cannot fit are refused, naming
the parameters, before anything is stored."""

from __future__ import annotations

import pytest

from conftest import TINY_SPACE, deep_update
from dlboost_search.errors import SpaceError
from dlboost_search.memory import check_fits, estimate, machine_memory
from dlboost_search.models import build_function, family_module
from dlboost_search.spaces import space_from_dict

FAMILY_CASES = [
    ("mlp", (10,), {"units": 64, "layers": 3}),
    ("mlp", (8, 8, 1), {"units": 300, "layers": 1, "batch_norm": True}),
    ("cnn", (8, 8, 1), {"filters": 16, "blocks": 2, "kernel_size": 3, "units": 32}),
    ("cnn", (32, 32, 3), {"filters": 8, "blocks": 3, "kernel_size": 5, "units": 64,
                          "rotation": 0.1, "flip": "horizontal"}),
    ("rnn", (24, 1), {"cell": "lstm", "units": 32, "layers": 2}),
    ("rnn", (12, 3), {"cell": "gru", "units": 16, "layers": 1, "bidirectional": True}),
]  # fmt: skip


@pytest.mark.parametrize(("family", "shape", "params"), FAMILY_CASES)
def test_a_familys_size_is_a_close_floor_of_the_keras_model(family, shape, params):
    import keras

    space = space_from_dict({**TINY_SPACE, "model": {"family": family}, "params": params}, "t")
    resolved = space.resolve({})
    model = build_function(space.model)(resolved, shape, "multiclass", 10)
    weights, activations = family_module(family).size(resolved, shape)
    built = model.count_params()
    keras.backend.clear_session()
    assert weights <= built <= 1.25 * weights + 1000  # biases and the output layer aside
    assert activations > 0


def space_with(**changes):
    return space_from_dict(deep_update(TINY_SPACE, changes), "space.yaml")


def test_the_largest_model_takes_the_high_ends_and_the_costliest_choices():
    space = space_with(
        params={
            "units": {"type": "int", "low": 4, "high": 512},
            "layers": {"type": "int", "low": 1, "high": 4},
            "optimizer": {"type": "categorical", "choices": ["sgd", "adam"]},
        }
    )
    floor = estimate(space, (10,), data_bytes=0)
    assert floor.params == {"units": 512, "layers": 4, "optimizer": "adam"}
    weights = 10 * 512 + 3 * 512 * 512 + 512
    assert floor.weights == weights and floor.model_bytes == weights * 4 * 4  # Adam: 4 copies


def test_a_space_too_large_for_the_machine_is_refused_naming_what_to_lower():
    space = space_with(params={"units": {"type": "int", "low": 4, "high": 65536}, "layers": 64})
    with pytest.raises(SpaceError) as refused:
        check_fits(space, (10,), data_bytes=0, workers=1, source="space.yaml")
    message = str(refused.value)
    assert message.startswith("space.yaml: this space needs at least")
    assert "units=65536" in message and "more than this machine's" in message
    assert "Lower the high end of the parameters that size the model" in message


def test_over_half_the_memory_is_a_warning_and_workers_multiply_it():
    half = machine_memory() * 0.3  # a floor of 30% of the memory: one worker fits
    assert check_fits(space_with(), (10,), data_bytes=int(half), workers=1, source="s") is None
    warning = check_fits(space_with(), (10,), data_bytes=int(half), workers=2, source="s")
    assert warning and "per worker, 2 workers" in warning and "over half" in warning
    with pytest.raises(SpaceError, match="Search on fewer rows"):
        check_fits(space_with(), (10,), data_bytes=int(half), workers=4, source="s")
