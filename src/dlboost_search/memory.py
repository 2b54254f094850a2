"""Will the largest model a space allows, with its data, fit in this machine's memory?

Checked before anything is stored, without TensorFlow: a space whose largest model cannot fit
would meet the out-of-memory killer mid-search, and on a shared machine the killer may pick
another process. The estimate is a floor, not a forecast: weights with their gradients and
optimizer slots, one training batch's activations and the data, 4 bytes each; TensorFlow
needs more. Custom and pretrained models are not sized (their structure is not in the
space); their data is.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from dlboost_search import streams
from dlboost_search.data import IMAGE_SUFFIXES, prepare, prepare_streamed
from dlboost_search.devices import machine_memory
from dlboost_search.errors import SpaceError
from dlboost_search.models import family_module

__all__ = [
    "check_fits",
    "data_bytes",
    "estimate",
    "machine_memory",
]

FLOAT_BYTES = 4
# Copies of each weight during training: the weight, its gradient, and the optimizer's slots.
WEIGHT_COPIES = {"adam": 4, "adamw": 4, "nadam": 4, "rmsprop": 3, "sgd": 2}
WARN_SHARE = 0.5  # warn when the floor already takes half the memory


@dataclass(frozen=True)
class Estimate:
    params: dict[str, Any]  # the searched parameters of the largest model
    weights: int
    model_bytes: int
    batch_bytes: int
    data_bytes: int

    @property
    def total(self) -> int:
        return self.model_bytes + self.batch_bytes + self.data_bytes


def estimate(space: Any, input_shape: tuple[int, ...], data_bytes: int) -> Estimate:
    """The memory floor of the space's largest model: every searched number at its high end,
    and each categorical at the choice that needs most (one at a time)."""
    size = getattr(family_module(space.model.family), "size", None)
    if size is None:  # custom and pretrained: their structure is not in the space
        return Estimate({}, 0, 0, 0, data_bytes)
    searched = space.searched()
    largest = {
        name: getattr(spec, "high", None) if not hasattr(spec, "choices") else spec.choices[0]
        for name, spec in searched.items()
    }

    def sized(values: dict[str, Any]) -> Estimate:
        params = space.resolve(values)
        weights, activations = size(params, input_shape)
        copies = WEIGHT_COPIES.get(params["optimizer"], 4)
        return Estimate(
            values,
            weights,
            weights * copies * FLOAT_BYTES,
            params["batch_size"] * activations * FLOAT_BYTES,
            data_bytes,
        )

    for name, spec in searched.items():
        for choice in getattr(spec, "choices", ()):
            if sized({**largest, name: choice}).total > sized(largest).total:
                largest[name] = choice
    return sized(largest)


def check_fits(
    space: Any, input_shape: tuple[int, ...], data_bytes: int, workers: int, source: str
) -> str | None:
    """Raise SpaceError when the largest model cannot fit in memory (`workers` processes each
    hold one); return a warning when it takes more than half, else None."""
    floor = estimate(space, input_shape, data_bytes)
    needed, available = floor.total * workers, machine_memory()
    if needed <= WARN_SHARE * available:
        return None
    parts = []
    if floor.weights:
        shown = ", ".join(f"{k}={v}" for k, v in floor.params.items())
        parts.append(
            (f"the largest model ({shown})" if shown else "the model")
            + f" has {floor.weights:,} weights: {_bytes(floor.model_bytes)} with gradients "
            f"and optimizer state"
        )
        parts.append(f"a training batch's activations {_bytes(floor.batch_bytes)}")
    parts.append(f"the data {_bytes(floor.data_bytes)}")
    per = f" per worker, {workers} workers" if workers > 1 else ""
    what = f"at least {_bytes(floor.total)}{per} ({'; '.join(parts)})"
    fix = _fix(floor, space)
    if needed > available:
        raise SpaceError(
            f"{source}: this space needs {what}, more than this machine's "
            f"{_bytes(available)} of memory: its trials would be killed for lack of memory. "
            f"{fix}"
        )
    return (
        f"{source}: this space needs {what}, over half of this machine's {_bytes(available)}. {fix}"
    )


def _fix(floor: Estimate, space: Any) -> str:
    largest = max(
        ("model", floor.model_bytes), ("batch", floor.batch_bytes), ("data", floor.data_bytes),
        key=lambda part: part[1],
    )[0]  # fmt: skip
    if largest == "model":
        return (
            "Lower the high end of the parameters that size the model (units, layers, filters, "
            "blocks), or use fewer --workers."
        )
    if largest == "batch":
        image = " or data.image_size" if space.data.images else ""
        return f"Lower batch_size{image}, or use fewer --workers."
    if space.data.images:
        return "Lower data.image_size, or search on fewer images."
    return "Search on fewer rows or features, or on a machine with more memory."


def _bytes(count: float) -> str:
    for unit in ("bytes", "KB", "MB", "GB", "TB", "PB"):
        if count < 1000 or unit == "PB":
            return f"{count:.0f} {unit}" if unit == "bytes" else f"{count:.3g} {unit}"
        count /= 1000
    raise AssertionError  # unreachable


def data_bytes(spec: Any, seed: int, streamed: bool = False) -> int:
    """The prepared data's bytes: the arrays (loaded already by the checks before this one),
    or an image folder's images once decoded at data.image_size (counted, not decoded).
    Streamed, a table holds its recipe's sample and a few chunks; an image folder, batches."""
    if streamed:
        if spec.images:
            return 0
        features = len(prepare_streamed(spec, seed).feature_names)
        return (streams.SAMPLE_ROWS + 3 * streams.CHUNK_ROWS) * features * FLOAT_BYTES
    if spec.images:
        count = sum(1 for f in Path(spec.images).rglob("*") if f.suffix.lower() in IMAGE_SUFFIXES)
        channels = 1 if spec.color_mode == "grayscale" else 3
        return count * math.prod(spec.image_size) * channels * FLOAT_BYTES
    data = prepare(spec, seed)
    return sum(a.nbytes for a in (data.x_train, data.y_train, data.x_val, data.y_val))
