"""Search spaces: a YAML file -> a validated, frozen `SearchSpace`.

Validation happens before anything is trained or stored. Each problem is reported with the
file, the key path, the value received and the fix. This module never imports TensorFlow.
"""

from __future__ import annotations

import difflib
import math
import re
from pathlib import Path
from typing import Annotated, Any, Literal

import yaml
from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    ValidationError,
    field_validator,
    model_validator,
)

from dlboost_search.catalog import BUILTIN_TASKS
from dlboost_search.errors import SpaceError, StudyError, shown
from dlboost_search.hyperparams import (
    TASK_METRICS,
    TRAINING_PARAMS,
    ParamRule,
    logged_metrics,
    metric_direction,
)
from dlboost_search.models import BUILDER_PATTERN, FAMILIES, family_params

__all__ = [
    "CategoricalParam",
    "ConstraintsSpec",
    "DataSpec",
    "FixedParam",
    "FloatParam",
    "IntParam",
    "SearchSettings",
    "SearchSpace",
    "DEFAULT_TRIALS",
    "HALVING_BOOTSTRAP",
    "check_study_name",
    "distributions",
    "format_duration",
    "load_space",
    "parse_duration",
    "space_from_dict",
    "suggest",
]

SAMPLERS = ("tpe", "random", "qmc")
PRUNERS = ("hyperband", "median", "successive_halving", "patient", "none")
# Study names become file and folder names (the Hyperband backend's state): no separators.
NAME_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9._-]*$"
NAME_MAX_LENGTH = 200
# A search space is a few hundred values in a few KB. Anchors and aliases (`&a`, `*a`) can
# make a small file stand for billions of values (an "alias bomb"): refused before use.
MAX_FILE_BYTES = 1_000_000
MAX_VALUES = 100_000
# The trial target of a space that gives neither search.trials nor search.timeout.
DEFAULT_TRIALS = 50
# search.halving_bootstrap when unset: 0, Optuna's own, promotes a trial alone at a rung. 1 and
# 2 let TPE propose a 100-epoch main job's best more often but stop every trial by epoch 27, for
# a worse best (one seed of ten with no complete trial): benchmarks/README.md, "Who proposes".
HALVING_BOOTSTRAP = 0
DURATION_UNITS = {"s": 1, "m": 60, "h": 3600}
CHECKPOINT_HELP = (
    "a number of epochs (an integer, 1 or more), a duration with its unit (90s, 10m, 1.5h), "
    "or null for no checkpoints"
)
DURATION_HELP = (
    "a duration is a number of seconds (600) or a number with s, m or h (90s, 10m, 1.5h), above 0"
)


def parse_duration(value: Any) -> float:
    """Seconds from a duration as a user writes it (600, "600", "90s", "10m", "1.5h");
    ValueError saying what is accepted for anything else."""
    seconds = None
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        seconds = float(value)
    elif isinstance(value, str):
        match = re.fullmatch(r"(\d+(?:\.\d*)?|\.\d+)\s*([smh]?)", value.strip().lower())
        if match:
            seconds = float(match[1]) * DURATION_UNITS[match[2] or "s"]
    if seconds is None or not math.isfinite(seconds) or seconds <= 0:
        raise ValueError(DURATION_HELP)
    return seconds


def format_duration(seconds: float) -> str:
    """`seconds` (rounded up to a whole second) as parse_duration reads it: 90s, 10m, 2h."""
    whole = math.ceil(seconds)
    if whole % 3600 == 0:
        return f"{whole // 3600}h"
    if whole % 60 == 0:
        return f"{whole // 60}m"
    return f"{whole}s"


class _DuplicateKey(Exception):
    pass


class _Loader(yaml.SafeLoader):
    """PyYAML reads `1e-4` (no dot) as a string, as YAML 1.1 says; users mean a float. And
    it keeps the last of two equal keys without a word; a space refuses them."""

    def construct_mapping(self, node: yaml.MappingNode, deep: bool = False) -> dict:
        seen: dict[Any, Any] = {}
        for key_node, _ in node.value:
            if key_node.tag == "tag:yaml.org,2002:merge":  # `<<: *base` may be overridden
                continue
            key = self.construct_object(key_node, deep=True)
            try:
                first = seen.setdefault(key, key_node)
            except TypeError:  # an unhashable key: PyYAML's own error says so
                continue
            if first is not key_node:
                raise _DuplicateKey(
                    f"key {shown(key)} appears twice in one mapping (lines "
                    f"{first.start_mark.line + 1} and {key_node.start_mark.line + 1}); YAML would "
                    f"silently keep the second. Keep one of them."
                )
        return super().construct_mapping(node, deep)


_Loader.add_implicit_resolver(
    "tag:yaml.org,2002:float",
    re.compile(
        r"^[-+]?(?:[0-9][0-9_]*\.[0-9_]*(?:[eE][-+]?[0-9]+)?|\.[0-9_]+(?:[eE][-+]?[0-9]+)?"
        r"|[0-9][0-9_]*[eE][-+]?[0-9]+|\.inf|\.Inf|\.INF|\.nan|\.NaN|\.NAN)$"
    ),
    list("-+0123456789."),
)


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, strict=True)


class IntParam(_Strict):
    type: Literal["int"]
    low: int
    high: int
    step: int = Field(1, ge=1)
    log: bool = False


class FloatParam(_Strict):
    type: Literal["float"]
    low: float
    high: float
    step: float | None = Field(None, gt=0)
    log: bool = False


class CategoricalParam(_Strict):
    type: Literal["categorical"]
    choices: list[bool | int | float | str | None] = Field(min_length=1)


class FixedParam(_Strict):
    type: Literal["fixed"]
    value: bool | int | float | str | None


ParamSpec = Annotated[
    IntParam | FloatParam | CategoricalParam | FixedParam, Field(discriminator="type")
]


class DataSpec(_Strict):
    builtin: str | None = None
    path: str | None = None
    # A folder with one sub-folder of images per class, resized to image_size (height, width).
    images: str | None = None
    image_size: tuple[int, int] = (32, 32)
    color_mode: Literal["rgb", "grayscale"] = "rgb"
    target: str | None = None
    validation_path: str | None = None
    validation_split: float = Field(0.2, gt=0, lt=1)
    task: Literal["regression", "binary", "multiclass"] | None = None
    # Tables: what becomes of missing values (impute: training medians plus a was-missing
    # column, or a "(missing)" category; drop: the rows go; refuse: an error, as before 0.2).
    missing: Literal["impute", "drop", "refuse"] = "impute"
    # Column types given by name; the others are inferred (docs/data.md).
    columns: dict[str, Literal["numeric", "categorical", "datetime", "ignore"]] = Field(
        default_factory=dict
    )
    # The categories kept per text column, most frequent first; the rest become "(other)".
    # None: no cap.
    max_categories: int | None = Field(50, ge=2)
    # Regression targets: auto takes log1p when the target is positive and skewed (tables.py).
    target_transform: Literal["auto", "log", "none"] = "auto"

    def __hash__(self) -> int:  # `columns` is a dict: prepare() caches on the spec
        return hash(self.model_dump_json())

    @field_validator("image_size", mode="before")
    @classmethod
    def _list_is_a_pair(cls, value: Any) -> Any:
        return tuple(value) if isinstance(value, list) else value  # YAML has no tuples


class ModelSpec(_Strict):
    family: str = "mlp"
    # The custom family's "package.module:function"; giving it implies family: custom.
    builder: str | None = None
    # The pretrained family's saved Keras model, and the layer whose output feeds the new head
    # (default: its last layer).
    backbone: str | None = None
    backbone_layer: str | None = None

    @model_validator(mode="before")
    @classmethod
    def _builder_means_custom(cls, raw: Any) -> Any:
        if isinstance(raw, dict) and raw.get("builder") and "family" not in raw:
            raw = {**raw, "family": "custom"}
        return raw


class ConstraintsSpec(_Strict):
    """Limits on the model a trial finds (limits.py): over one, the trial is infeasible, and
    never reported as best. None: no limit."""

    max_params: int | None = None
    max_latency_ms: float | None = None
    max_size_mb: float | None = None

    @field_validator("max_params", mode="before")
    @classmethod
    def _whole_number(cls, value: Any) -> Any:
        # 1e6 in YAML is a float: a whole one is taken as the number it is.
        if isinstance(value, float) and value.is_integer():
            value = int(value)
        if value is not None and (isinstance(value, bool) or not isinstance(value, int)):
            raise ValueError("a whole number of parameters, e.g. max_params: 100000")
        if value is not None and value < 1:
            raise ValueError("at least 1 parameter; leave the key out for no limit")
        return value

    @field_validator("max_latency_ms", "max_size_mb", mode="before")
    @classmethod
    def _above_zero(cls, value: Any, info: Any) -> Any:
        unit = "milliseconds" if info.field_name == "max_latency_ms" else "megabytes"
        example = "max_latency_ms: 5" if unit == "milliseconds" else "max_size_mb: 10"
        number = isinstance(value, (int, float)) and not isinstance(value, bool)
        if value is not None and not (number and math.isfinite(value) and value > 0):
            raise ValueError(
                f"a number of {unit} above 0, e.g. {example}; leave the key out for no limit"
            )
        return None if value is None else float(value)

    def given(self) -> dict[str, float]:
        """The limits set, by key."""
        return {key: value for key, value in self.model_dump().items() if value is not None}


class ObjectiveSpec(_Strict):
    metric: str = "val_loss"
    direction: Literal["minimize", "maximize"] | None = None
    constraints: ConstraintsSpec = ConstraintsSpec()

    @field_validator("constraints", mode="before")
    @classmethod
    def _a_mapping(cls, value: Any) -> Any:
        if value is None:  # `constraints:` with nothing under it
            return {}
        if not isinstance(value, (dict, ConstraintsSpec)):
            raise ValueError(
                "a mapping of limits, e.g. {max_params: 100000, max_latency_ms: 5, "
                "max_size_mb: 10} (any of the three)"
            )
        return value


class EarlyStoppingSpec(_Strict):
    patience: int = Field(10, ge=1)
    min_delta: float = Field(0.0, ge=0)


class TrainingSpec(_Strict):
    max_epochs: int = Field(100, ge=1)
    batch_size: int = Field(32, ge=1)
    early_stopping: EarlyStoppingSpec = EarlyStoppingSpec()
    # auto: the compiled epoch loop on data held in memory; Keras fit on data streamed because
    # it is above the size threshold (data.streaming). epoch_loop and fit hold it in memory.
    engine: Literal["auto", "epoch_loop", "fit"] = "auto"
    # A trial still running after this long (a stuck read, a deadlock) is failed and its
    # worker replaced; None: no limit.
    trial_timeout_seconds: int | None = Field(None, ge=1)
    # balanced: each class weighs rows / (classes x its rows) in the training loss.
    class_weight: Literal["balanced", "none"] = "none"
    # Keras' mixed_float16 policy on a GPU; a machine without one refuses to run it.
    mixed_precision: bool = False
    # Mid-trial checkpoints: a running trial saves its state every N epochs (an integer) or
    # every so long (90s, 10m, 1h); a trial retried after its worker was lost goes on from its
    # last one. null: never. The default costs nothing to trials shorter than 10 minutes.
    checkpoint_every: int | str | None = "10m"

    @field_validator("checkpoint_every", mode="before")
    @classmethod
    def _epochs_or_duration(cls, value: Any) -> Any:
        if value is None:
            return None
        if isinstance(value, int) and not isinstance(value, bool):
            if value < 1:
                raise ValueError(f"{CHECKPOINT_HELP}; got {value}")
            return value
        if isinstance(value, str):
            try:
                parse_duration(value)
            except ValueError:
                raise ValueError(f"{CHECKPOINT_HELP}; got {value!r}") from None
            return value
        raise ValueError(f"{CHECKPOINT_HELP}; got {value!r}")

    def checkpoint_policy(self) -> tuple[int | None, float | None]:
        """(every how many epochs, every how many seconds) a running trial saves its state;
        (None, None): never."""
        every = self.checkpoint_every
        if every is None:
            return None, None
        if isinstance(every, int):
            return every, None
        return None, parse_duration(every)


class SearchSettings(_Strict):
    # optuna: a sampler + pruner study; hyperband: keras-tuner's Hyperband (hyperband.py),
    # which uses training.max_epochs, factor and hyperband_iterations instead of
    # sampler, pruner and trials (a timeout applies to both).
    backend: Literal["optuna", "hyperband"] = "optuna"
    factor: int = Field(3, ge=2)
    hyperband_iterations: int = Field(1, ge=1)
    sampler: Literal["tpe", "random", "qmc"] = "tpe"
    # TPE's random start-up trials; None: half of `trials`, between 5 and 20 (startup()).
    startup_trials: int | None = Field(None, ge=0)
    pruner: Literal["hyperband", "median", "successive_halving", "patient", "none"] = (
        "successive_halving"
    )
    # successive_halving: how many trials must have reached a rung before it promotes any
    # (Optuna's bootstrap_count); the first ones to reach it stop there. None: HALVING_BOOTSTRAP.
    halving_bootstrap: int | None = Field(None, ge=0)
    # The target of finished trials, and the time budget (seconds; YAML takes 10m, 1.5h...),
    # both for the study's whole life: a run stops at whichever comes first. With neither,
    # the target is DEFAULT_TRIALS; with a timeout alone, time alone ends the search.
    trials: int | None = Field(None, ge=1)
    timeout: float | None = None
    seed: int | None = 0
    max_consecutive_failures: int = Field(5, ge=1)
    # Crash recovery, on any machine: a running trial writes a heartbeat every
    # heartbeat_seconds; one silent for stale_after_seconds lost its worker, and is failed and
    # run again with the same parameters, at most `retries` times.
    heartbeat_seconds: int = Field(10, ge=1)
    stale_after_seconds: int = Field(60, ge=2)
    retries: int = Field(1, ge=0)
    # Trial models (artifacts.py): where they go (a folder, or s3://BUCKET for S3-compatible
    # object storage; None: NAME.artifacts/ beside the SQLite file), and how many of the best
    # complete trials keep theirs (0: none is stored; None: every one).
    artifacts: str | None = None
    keep_models: int | None = Field(10, ge=0)

    @field_validator("timeout", mode="before")
    @classmethod
    def _duration(cls, value: Any) -> Any:
        return None if value is None else parse_duration(value)

    def startup(self) -> int:
        """TPE's random start-up trials: as given, or half the study's trials, at most 20 and
        at least 5 (20 for a search bounded by time alone). With successive halving, fewer
        start-up trials let TPE settle early on what learns fastest: 20 beat 10 at every
        budget measured (benchmarks/README.md, Search quality), but a fixed 20 left a 20-trial
        study no trial of TPE's own."""
        if self.startup_trials is not None:
            return self.startup_trials
        target = self.trial_target()
        return 20 if target is None else min(20, max(5, target // 2))

    def bootstrap(self) -> int:
        """Successive halving's bootstrap: as given, else HALVING_BOOTSTRAP."""
        return HALVING_BOOTSTRAP if self.halving_bootstrap is None else self.halving_bootstrap

    def trial_target(self, timeout: float | None = None) -> int | None:
        """The finished trials to reach: `trials`, else DEFAULT_TRIALS unless a time budget
        (this space's, or `timeout` given to the run) ends the search."""
        if self.trials is not None:
            return self.trials
        return None if timeout or self.timeout else DEFAULT_TRIALS


class SearchSpace(_Strict):
    name: str = Field(pattern=NAME_PATTERN, max_length=NAME_MAX_LENGTH)
    description: str = ""
    data: DataSpec
    model: ModelSpec = ModelSpec()
    objective: ObjectiveSpec = ObjectiveSpec()
    training: TrainingSpec = TrainingSpec()
    search: SearchSettings = SearchSettings()
    params: dict[str, ParamSpec] = Field(default_factory=dict)

    @model_validator(mode="before")
    @classmethod
    def _plain_values_are_fixed(cls, raw: Any) -> Any:
        # `batch_norm: true` in YAML means the value is fixed, not searched.
        if isinstance(raw, dict) and isinstance(raw.get("params"), dict):
            params = {
                name: spec if isinstance(spec, dict) else {"type": "fixed", "value": spec}
                for name, spec in raw["params"].items()
            }
            raw = {**raw, "params": params}
        return raw

    @property
    def direction(self) -> str:
        """The objective's direction, given or implied by the metric."""
        if self.objective.direction:
            return self.objective.direction
        base = self.objective.metric.removeprefix("val_")
        return next((m[base] for m in TASK_METRICS.values() if base in m), "minimize")

    @property
    def param_rules(self) -> dict[str, ParamRule]:
        return {**TRAINING_PARAMS, **family_params(self.model.family)}

    def searched(self) -> dict[str, Any]:
        """Specs of the parameters a trial samples (not the fixed ones)."""
        return {k: v for k, v in self.params.items() if not isinstance(v, FixedParam)}

    def resolve(self, sampled: dict[str, Any]) -> dict[str, Any]:
        """Every parameter the model and training need: sampled, fixed, or the default."""
        values = {name: rule.default for name, rule in self.param_rules.items()}
        values["batch_size"] = self.training.batch_size
        values.update({k: v.value for k, v in self.params.items() if isinstance(v, FixedParam)})
        values.update(sampled)
        return values

    def example_params(self) -> dict[str, Any]:
        """A full parameter set with each searched parameter at its low end or first choice."""
        return self.resolve(
            {name: spec.choices[0] if isinstance(spec, CategoricalParam) else spec.low
             for name, spec in self.searched().items()}
        )  # fmt: skip

    def to_dict(self) -> dict[str, Any]:
        return self.model_dump(mode="json")

    def check_task(self, task: str, source: str) -> None:
        """Fail unless the objective's metric is one that `task` logs."""
        metric = self.objective.metric
        natural = metric_direction(task, metric)
        if natural is None:
            names = ", ".join(logged_metrics(task))
            raise SpaceError(
                f"{source}: objective.metric: a {task} model does not log {metric!r}. "
                f"Use one of: {names} (val_ metrics are measured on the validation split)."
            )
        if self.objective.direction and self.objective.direction != natural:
            raise SpaceError(
                f"{source}: objective.direction: {metric!r} gets better as it goes "
                f"{'down' if natural == 'minimize' else 'up'}, so it must be {natural!r}, "
                f"got {self.objective.direction!r}. Write direction: {natural} or leave it out."
            )


def check_study_name(name: str, option: str) -> None:
    """Refuse a study name that `name:` in a space would refuse: names become folder names."""
    if len(name) > NAME_MAX_LENGTH or not re.match(NAME_PATTERN, name):
        raise StudyError(
            f"{option} {shown(name)}: a study name is letters, digits, '.', '_' and '-', "
            f"starting with a letter or digit, at most {NAME_MAX_LENGTH} characters."
        )


def _read_yaml(path: Path, source: str) -> Any:
    """The YAML document in `path`, refused when it is too big, nested too deep, or expands
    (through aliases) to more values than a search space could hold."""
    size = path.stat().st_size
    if size > MAX_FILE_BYTES:
        raise SpaceError(
            f"{source}: {size:,} bytes; a search space is a few KB (at most "
            f"{MAX_FILE_BYTES:,} bytes are read). Is this the right file?"
        )
    try:
        raw = yaml.load(path.read_text(encoding="utf-8"), Loader=_Loader)  # noqa: S506 (a SafeLoader)
    except UnicodeDecodeError as exc:
        raise SpaceError(f"{source}: not UTF-8 text ({exc}); save the file as UTF-8.") from None
    except _DuplicateKey as exc:
        raise SpaceError(f"{source}: {exc}") from None
    except yaml.YAMLError as exc:
        raise SpaceError(f"{source}: not valid YAML: {exc}") from None
    except RecursionError:
        raise SpaceError(f"{source}: nested too deeply to be a search space.") from None
    values = _expanded_size(raw, source)
    if values > MAX_VALUES:
        raise SpaceError(
            f"{source}: its anchors and aliases (&name, *name) expand to {values:,} values; a "
            f"search space has a few hundred (at most {MAX_VALUES:,} are read). Write the "
            f"values out, without aliases nested in aliases."
        )
    return raw


def _expanded_size(root: Any, source: str) -> int:
    """How many values `root` holds once every alias is written out, counted without writing
    them out: an alias is the same Python object, so each object is counted once and reused."""
    sizes: dict[int, int] = {}
    pending: set[int] = set()

    def size(value: Any) -> int:
        if not isinstance(value, (dict, list)):
            return 1
        key = id(value)
        if key in sizes:
            return sizes[key]
        if key in pending:
            raise SpaceError(f"{source}: an alias refers to the mapping or list it is in.")
        pending.add(key)
        children = [*value.keys(), *value.values()] if isinstance(value, dict) else value
        sizes[key] = 1 + sum(size(child) for child in children)
        pending.discard(key)
        return sizes[key]

    try:
        return size(root)
    except RecursionError:
        raise SpaceError(f"{source}: nested too deeply to be a search space.") from None


def load_space(path: str | Path) -> SearchSpace:
    """Read and validate a search-space YAML file."""
    path = Path(path)
    source = str(path)
    if not path.is_file():
        raise SpaceError(
            f"{source}: no such file. Give the path of a search-space YAML file, "
            f"for example search_spaces/diabetes_mlp.yaml."
        )
    raw = _read_yaml(path, source)
    if not isinstance(raw, dict):
        raise SpaceError(
            f"{source}: a search space is a YAML mapping with at least `name`, `data` and "
            f"`params`; got {type(raw).__name__}."
        )
    # Paths are relative to where the command runs; the study stores them absolute so that
    # `resume` finds the files from any directory.
    for section, keys in (
        ("data", ("path", "validation_path", "images")),
        ("model", ("backbone",)),
    ):
        if isinstance(raw.get(section), dict):
            raw[section] = {
                key: str(Path(value).resolve()) if key in keys and isinstance(value, str) else value
                for key, value in raw[section].items()
            }
    return space_from_dict(raw, source)


def space_from_dict(raw: dict[str, Any], source: str) -> SearchSpace:
    """Validate a space given as a mapping (from YAML or from a stored study)."""
    params = raw.get("params") if isinstance(raw, dict) else None
    if isinstance(params, dict):
        lists = [name for name, spec in params.items() if isinstance(spec, list)]
        if lists:
            raise SpaceError(
                _join(
                    source,
                    [
                        f"params.{name}: a list is not a parameter. To search among values write "
                        f"{{type: categorical, choices: {shown(params[name])}}}; to fix one write "
                        f"the value alone."
                        for name in lists
                    ],
                )
            )
    try:
        space = SearchSpace.model_validate(raw)
    except ValidationError as exc:
        raise SpaceError(_describe(exc, raw, source)) from None
    problems = _semantic_problems(space)
    if problems:
        raise SpaceError(_join(source, problems))
    if space.data.builtin:
        space.check_task(BUILTIN_TASKS[space.data.builtin], source)
    elif space.data.task:
        space.check_task(space.data.task, source)
    return space


def _join(source: str, problems: list[str]) -> str:
    if len(problems) == 1:
        return f"{source}: {problems[0]}"
    listed = "".join(f"\n  - {p}" for p in problems)
    return f"{source}: {len(problems)} problems in the search space:{listed}"


def _did_you_mean(word: str, options: list[str] | tuple[str, ...]) -> str:
    close = difflib.get_close_matches(word, [o for o in options if o != word], n=1)
    return f" Did you mean {close[0]!r}?" if close else ""


def _describe(exc: ValidationError, raw: Any, source: str) -> str:
    problems = []
    for error in exc.errors():
        loc = [p for p in error["loc"] if p not in ("int", "float", "categorical", "fixed")]
        # The union puts its tag in the location: params.units.int.low -> params.units.low
        key = ".".join(_short_key(p) for p in loc) or "(top level)"
        kind = error["type"]
        if kind == "extra_forbidden":
            allowed = _allowed_keys(loc[:-1], raw)
            problems.append(
                f"{key}: unknown key {shown(str(loc[-1]))}.{_did_you_mean(str(loc[-1]), allowed)} "
                f"Allowed here: {', '.join(allowed)}."
            )
        elif kind == "missing":
            problems.append(f"{key}: required key is missing; add it.")
        elif kind == "value_error":  # our own validators' messages, without pydantic's prefix
            problems.append(f"{key}: {error['ctx']['error']}; got {shown(error['input'])}.")
        elif kind in ("union_tag_invalid", "union_tag_not_found"):
            problems.append(
                f"{key}: a parameter is a plain value (fixed) or a mapping with "
                f"type: int, float or categorical; got {shown(error['input'])}."
            )
        else:
            problems.append(f"{key}: {error['msg']}; got {shown(error['input'])}.")
    return _join(source, problems)


def _short_key(part: Any) -> str:
    text = str(part)
    return text if len(text) <= 40 else text[:37] + "..."


def _allowed_keys(loc: list[Any], raw: Any) -> list[str]:
    """The keys allowed in the mapping at `loc`, for the unknown-key message."""
    if loc[:1] == ["params"]:
        return _param_keys(loc, raw)
    model: Any = SearchSpace
    for part in loc:
        field = model.model_fields.get(part) if isinstance(part, str) else None
        model = field.annotation if field else None
        if not (isinstance(model, type) and issubclass(model, BaseModel)):
            return []
    return list(model.model_fields)


def _param_keys(loc: list[Any], raw: Any) -> list[str]:
    """Keys allowed in the parameter mapping at params.NAME, chosen by its `type`."""
    spec = raw.get("params", {}).get(loc[1]) if len(loc) == 2 else None
    kind = spec.get("type") if isinstance(spec, dict) else None
    model = {"int": IntParam, "float": FloatParam, "categorical": CategoricalParam}.get(kind)
    return list(model.model_fields) if model else []


def _semantic_problems(space: SearchSpace) -> list[str]:
    problems = []
    data = space.data
    if sum(x is not None for x in (data.builtin, data.path, data.images)) != 1:
        problems.append(
            "data: give exactly one of `builtin` (one of "
            f"{', '.join(BUILTIN_TASKS)}), `path` (a CSV, Parquet or NPZ file) or `images` "
            f"(a folder with one sub-folder of images per class)."
        )
    if min(data.image_size) < 1:
        problems.append(
            f"data.image_size: [height, width] in pixels, both at least 1; got "
            f"{list(data.image_size)}."
        )
    if data.images is not None and (data.target or data.validation_path or data.task):
        problems.append(
            "data: an image folder's classes are its sub-folders; remove `target`, "
            "`validation_path` and `task`."
        )
    npz = data.path is not None and data.path.lower().endswith(".npz")
    if data.columns and (data.images is not None or npz):
        problems.append(
            "data.columns: column kinds are for CSV and Parquet tables; an image folder or an "
            "NPZ file has no named columns. Remove `columns`."
        )
    if data.target is not None and data.target in data.columns:
        problems.append(
            f"data.columns: {shown(data.target)} is the target, not a feature; remove it from "
            f"`columns` (the target's kind is `data.task`)."
        )
    if data.builtin is not None and data.builtin not in BUILTIN_TASKS:
        problems.append(
            f"data.builtin: unknown dataset {shown(data.builtin)}."
            f"{_did_you_mean(data.builtin, tuple(BUILTIN_TASKS))} "
            f"Built-in datasets: {', '.join(BUILTIN_TASKS)}."
        )
    if data.builtin is not None and (data.target or data.validation_path or data.task):
        problems.append(
            "data: a built-in dataset brings its own target and task; remove "
            "`target`, `validation_path` and `task`."
        )
    if data.path is not None and not data.path.lower().endswith(".npz") and not data.target:
        problems.append(
            "data.target: a CSV or Parquet file needs `target: COLUMN`, the column to predict."
        )
    search = space.search
    if search.stale_after_seconds < 2 * search.heartbeat_seconds:
        problems.append(
            f"search.stale_after_seconds: {search.stale_after_seconds} is less than twice "
            f"search.heartbeat_seconds ({search.heartbeat_seconds}), so one late heartbeat "
            f"would fail a live trial. Make it at least {2 * search.heartbeat_seconds}."
        )
    if search.halving_bootstrap is not None and search.pruner != "successive_halving":
        problems.append(
            f"search.halving_bootstrap: only the successive_halving pruner takes it; got "
            f"pruner: {search.pruner}. Remove halving_bootstrap or set pruner: successive_halving."
        )
    metric = space.objective.metric
    if not any(metric.removeprefix("val_") in m for m in TASK_METRICS.values()):
        known = sorted({f"val_{m}" for task_metrics in TASK_METRICS.values() for m in task_metrics})
        problems.append(
            f"objective.metric: unknown metric {shown(metric)}.{_did_you_mean(metric, known)} "
            f"Known: {', '.join(known)} (and the same without val_, on the training data)."
        )
    if space.model.family not in FAMILIES:
        problems.append(
            f"model.family: unknown family {shown(space.model.family)}."
            f"{_did_you_mean(space.model.family, FAMILIES)} Families: {', '.join(FAMILIES)}."
        )
        return problems
    model = space.model
    if model.family == "custom" and not model.builder:
        problems.append(
            'model.builder: the custom family needs builder: "package.module:function", a '
            "function (params, input_shape, task, n_outputs) returning an uncompiled keras.Model."
        )
    if model.family != "custom" and model.builder:
        problems.append(
            f"model.builder: only the custom family takes a builder; remove `family: "
            f"{model.family}` (a builder implies custom) or the builder."
        )
    if model.family == "pretrained" and not model.backbone:
        problems.append(
            "model.backbone: the pretrained family needs backbone: PATH, a Keras model saved "
            "with model.save('backbone.keras') whose input takes the data's rows."
        )
    if model.family != "pretrained" and (model.backbone or model.backbone_layer):
        problems.append(
            "model.backbone: only the pretrained family takes a backbone; add `family: "
            "pretrained` or remove `backbone` and `backbone_layer`."
        )
    if model.builder and not re.match(BUILDER_PATTERN, model.builder):
        problems.append(
            f'model.builder: {shown(model.builder)} is not "package.module:function"; for example '
            f'builder: "my_models:build" for build() in my_models.py.'
        )
    rules = space.param_rules
    for name, spec in space.params.items():
        key = f"params.{name}"
        if name not in rules and model.family == "custom":  # the user's own hyperparameter
            problems.extend(f"{key}{p}" for p in _param_problems(spec, FREE_RULE))
            continue
        if name not in rules:
            problems.append(
                f"{key}: {space.model.family} models have no hyperparameter {shown(name)}."
                f"{_did_you_mean(name, tuple(rules))} Known: {', '.join(rules)}."
            )
            continue
        problems.extend(f"{key}{p}" for p in _param_problems(spec, rules[name]))
    if "clipvalue" in space.params and "clipnorm" in space.params:
        problems.append("params: clipvalue and clipnorm both clip gradients; keep one of them.")
    if space.search.backend == "hyperband":
        for name, spec in space.searched().items():
            kinds = {type(choice) for choice in getattr(spec, "choices", ())}
            if len(kinds) > 1 or type(None) in kinds:
                problems.append(
                    f"params.{name}.choices: keras-tuner (search.backend: hyperband) takes "
                    f"choices of one type, without null; got {shown(spec.choices)}. Split the "
                    f"parameter in two, or use search.backend: optuna."
                )
    return problems


# A custom builder's own hyperparameters: any value, only the range itself is checked.
FREE_RULE = ParamRule("any", None, "a custom builder's hyperparameter")


def _param_problems(spec: Any, rule: ParamRule) -> list[str]:
    if isinstance(spec, FixedParam):
        if spec.value is None and rule.default is None:
            return []
        why = rule.problem(spec.value)
        return [f": {rule.help} {why}; got {shown(spec.value)}."] if why else []
    if isinstance(spec, CategoricalParam):
        # None is a valid choice where the default is None: clipnorm in [null, 1.0].
        return [
            f".choices: {rule.help} {why}; got {shown(choice)}."
            for choice in spec.choices
            if not (choice is None and rule.default is None) and (why := rule.problem(choice))
        ]
    if rule.kind in ("bool", "choice"):
        suggestion = "[true, false]" if rule.kind == "bool" else f"[{', '.join(rule.choices)}]"
        return [
            f": {rule.help} is not numeric; search it with "
            f"{{type: categorical, choices: {suggestion}}}."
        ]
    if isinstance(spec, FloatParam) and rule.kind == "int":
        return [f".type: {rule.help} is a whole number; write type: int."]
    problems = []
    if spec.low > spec.high:
        problems.append(f": low ({spec.low!r}) is above high ({spec.high!r}); swap them.")
    if spec.log and spec.low <= 0:
        problems.append(
            f".low: a log-scale range must start above 0, got {spec.low!r}; "
            f"raise low or set log: false."
        )
    if spec.log and isinstance(spec, FloatParam) and spec.step is not None:
        problems.append(".step: step and log cannot be combined; remove one.")
    if spec.log and isinstance(spec, IntParam) and spec.step != 1:
        problems.append(".step: step and log cannot be combined; remove one.")
    if spec.step and spec.low <= spec.high:
        steps = (spec.high - spec.low) / spec.step
        if abs(steps - round(steps)) > 1e-9:
            fitted = spec.low + math.floor(steps) * spec.step
            problems.append(
                f".step: high - low ({spec.high - spec.low:g}) is not a multiple of step "
                f"({spec.step:g}), so {spec.high!r} could never be sampled; set high to "
                f"{fitted:g} or change step."
            )
    for bound in ("low", "high"):
        value = getattr(spec, bound)
        if isinstance(value, float) and not math.isfinite(value):
            problems.append(f".{bound}: must be a finite number, got {value!r}.")
        elif why := rule.problem(value):
            problems.append(f".{bound}: {rule.help} {why}; got {value!r}.")
    return problems


def distributions(space: SearchSpace) -> dict[str, Any]:
    """The Optuna distribution of each searched parameter, as `suggest` samples them."""
    import optuna

    result: dict[str, Any] = {}
    for name, spec in space.searched().items():
        if isinstance(spec, IntParam):
            result[name] = optuna.distributions.IntDistribution(
                spec.low, spec.high, step=spec.step, log=spec.log
            )
        elif isinstance(spec, FloatParam):
            result[name] = optuna.distributions.FloatDistribution(
                spec.low, spec.high, step=spec.step, log=spec.log
            )
        else:
            result[name] = optuna.distributions.CategoricalDistribution(spec.choices)
    return result


def suggest(trial: Any, space: SearchSpace) -> dict[str, Any]:
    """Sample the searched parameters of `space` through an Optuna trial."""
    values: dict[str, Any] = {}
    for name, spec in space.searched().items():
        if isinstance(spec, IntParam):
            values[name] = trial.suggest_int(
                name, spec.low, spec.high, step=spec.step, log=spec.log
            )
        elif isinstance(spec, FloatParam):
            values[name] = trial.suggest_float(
                name, spec.low, spec.high, step=spec.step, log=spec.log
            )
        else:
            values[name] = trial.suggest_categorical(name, spec.choices)
    return values
