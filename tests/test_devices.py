"""Which device each worker gets: GPUs found from nvidia-smi's listing (simulated here, as
nvidia-smi prints it), CUDA_VISIBLE_DEVICES honoured, workers spread and memory shared; and
on this machine, which has no GPU, the cores split and trials recorded on "cpu"."""

from __future__ import annotations

import io
import json

import pytest
from rich.console import Console

from conftest import TINY_SPACE, deep_update, load
from dlboost_search import events, records
from dlboost_search.devices import (
    CONTEXT_MB,
    WORKER_MEMORY_MB,
    Gpu,
    Placement,
    cpu_cores,
    device_of,
    plan,
    visible_gpus,
)
from dlboost_search.errors import DeviceError
from dlboost_search.progress import StudyProgress
from dlboost_search.spaces import space_from_dict
from dlboost_search.study import summarize
from dlboost_search.testing import synthetic_study

# `nvidia-smi --query-gpu=index,uuid,memory.total --format=csv,noheader,nounits` on two GPUs.
TWO_GPUS = (
    "0, GPU-1b2c3d4e-0000-1111-2222-333344445555, 81559\n"
    "1, GPU-9f8e7d6c-aaaa-bbbb-cccc-ddddeeeeffff, 81559\n"
)
NO_VARIABLE: dict[str, str] = {}


def test_the_listing_gives_each_gpu_its_index_uuid_and_memory():
    assert visible_gpus(TWO_GPUS, NO_VARIABLE) == [
        Gpu(0, "GPU-1b2c3d4e-0000-1111-2222-333344445555", 81559),
        Gpu(1, "GPU-9f8e7d6c-aaaa-bbbb-cccc-ddddeeeeffff", 81559),
    ]
    assert visible_gpus("", NO_VARIABLE) == []  # no nvidia-smi, or one that failed


@pytest.mark.parametrize(
    ("variable", "indexes"),
    [
        ("1", [1]),
        ("1,0", [1, 0]),  # CUDA's order is the variable's
        ("GPU-9f8e", [1]),  # a UUID, or its start
        ("0,7,1", [0]),  # CUDA stops at the first device it does not know
        ("", []),
        ("-1", []),
    ],
)
def test_an_existing_cuda_visible_devices_is_honoured(variable, indexes):
    gpus = visible_gpus(TWO_GPUS, {"CUDA_VISIBLE_DEVICES": variable})
    assert [g.index for g in gpus] == indexes


def test_without_gpus_auto_starts_one_worker_per_core_each_with_its_core():
    assert plan(None, None, [], cores=8, memory_mb=64_000) == [Placement(threads=1)] * 8


def test_without_gpus_auto_starts_no_more_workers_than_the_memory_holds():
    assert len(plan(None, None, [], cores=8, memory_mb=3 * WORKER_MEMORY_MB + 10)) == 3
    assert plan(None, None, [], cores=8, memory_mb=100) == [Placement(threads=None)]


@pytest.mark.parametrize(
    ("cpu_max", "expected"),
    [("150000 100000\n", 1), ("50000 100000\n", 1), ("max 100000\n", None), (None, None)],
)
def test_a_container_cpu_limit_caps_the_cores(tmp_path, cpu_max, expected):
    """A pod limited to 1.5 CPUs on a bigger node: cgroup v2's cpu.max, not the affinity mask
    (the node's cores), says how many workers `auto` starts and how the cores are split."""
    import os

    if cpu_max is not None:
        (tmp_path / "cpu.max").write_text(cpu_max)
    assert cpu_cores(tmp_path) == (expected or len(os.sched_getaffinity(0)))


def test_without_gpus_a_count_of_workers_splits_the_cores_as_before():
    assert plan(2, None, [], cores=8) == [Placement(threads=4)] * 2
    assert plan(3, None, [], cores=2) == [Placement(threads=1)] * 3
    assert plan(1, None, [], cores=8) == [Placement(threads=None)]  # TensorFlow's defaults


def test_auto_on_two_gpus_starts_a_worker_on_each_with_memory_growth():
    gpus = visible_gpus(TWO_GPUS, NO_VARIABLE)
    workers = plan(None, None, gpus, cores=16)
    assert [(p.device, p.visible, p.memory_limit_mb) for p in workers] == [
        ("gpu:0", gpus[0].uuid, None),
        ("gpu:1", gpus[1].uuid, None),
    ]
    assert {p.threads for p in workers} == {8}


def test_half_a_gpu_per_worker_runs_two_on_one_gpu_each_limited_to_half_its_memory():
    gpu = visible_gpus(TWO_GPUS, {"CUDA_VISIBLE_DEVICES": "1"})
    workers = plan(None, 0.5, gpu, cores=4)
    assert [p.device for p in workers] == ["gpu:1", "gpu:1"]
    assert [p.memory_limit_mb for p in workers] == [81559 // 2 - CONTEXT_MB] * 2
    # Both limits and both CUDA contexts fit the GPU together.
    assert sum(p.memory_limit_mb + CONTEXT_MB for p in workers) <= 81559


def test_a_count_of_workers_takes_the_gpus_in_turn_and_shares_their_memory():
    gpus = visible_gpus(TWO_GPUS, NO_VARIABLE)
    workers = plan(3, None, gpus, cores=6)
    assert [p.device for p in workers] == ["gpu:0", "gpu:1", "gpu:0"]
    # gpu:0 has two workers, each with half of it; gpu:1's worker has it alone.
    assert [p.memory_limit_mb for p in workers] == [81559 // 2 - CONTEXT_MB, None, 40279]


def test_auto_stops_at_what_the_backend_takes():
    gpus = visible_gpus(TWO_GPUS, NO_VARIABLE)
    assert [p.device for p in plan(None, None, gpus, cores=8, most=1)] == ["gpu:0"]
    assert len(plan(None, None, [], cores=8, memory_mb=64_000, most=1)) == 1


@pytest.mark.parametrize(
    ("workers", "share", "gpus", "words"),
    [
        (None, 0, TWO_GPUS, "more than 0 and at most 1"),
        (None, 1.5, TWO_GPUS, "more than 0 and at most 1"),
        (None, 0.5, "", "shows none"),
        (5, 0.5, TWO_GPUS, "needs 2.5 GPUs, and 2 are visible"),
    ],
)
def test_a_device_request_the_machine_cannot_meet_is_refused(workers, share, gpus, words):
    with pytest.raises(DeviceError, match=words):
        plan(workers, share, visible_gpus(gpus, NO_VARIABLE), cores=4)


def test_a_trial_records_the_device_tensorflow_trains_it_on():
    assert device_of(Placement("gpu:1", "GPU-9f8e", None, None), gpus_seen=1) == "gpu:1"
    assert device_of(Placement(threads=2), gpus_seen=0) == "cpu"
    # A GPU TensorFlow found that nvidia-smi did not (a MIG slice): not pinned, still a GPU.
    assert device_of(Placement(), gpus_seen=1) == "gpu"
    # Pinned to a GPU, but a CPU-only TensorFlow sees none.
    assert device_of(Placement("gpu:0", "GPU-1b2c", None, None), gpus_seen=0) == "cpu"


@pytest.mark.parametrize(
    ("args", "words"),
    [
        (["--gpus-per-worker", "2"], "--gpus-per-worker takes the share of one GPU"),
        (["--gpus-per-worker", "0.5"], "asks for GPUs, and this machine shows none"),
        (["--workers", "many"], "--workers takes a whole number"),
        (["--workers", "0"], "--workers takes a whole number"),
    ],
)
def test_a_bad_device_option_is_refused_in_one_paragraph_before_anything_is_stored(
    run_cli, write_space, tmp_path, args, words
):
    db = tmp_path / "studies.db"
    result = run_cli("start", str(write_space()), "--storage", f"sqlite:///{db}", *args)
    assert result.returncode == 2, result.stdout + result.stderr
    assert words in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1  # one paragraph, no traceback
    assert not db.exists()


def test_mixed_precision_without_a_gpu_is_refused_by_start_and_said_by_validate(
    run_cli, write_space, tmp_path
):
    """This machine has no GPU: the decision documented in docs/many-machines.md ("GPUs on
    one machine")."""
    space = write_space(training={"mixed_precision": True})
    db = tmp_path / "studies.db"
    result = run_cli("start", str(space), "--storage", f"sqlite:///{db}")
    assert result.returncode == 2, result.stdout + result.stderr
    assert "training.mixed_precision is true, and this machine has no GPU" in result.stderr
    assert "Set training.mixed_precision: false" in result.stderr
    assert not db.exists()
    checked = run_cli("validate", str(space))
    assert checked.returncode == 0, checked.stderr
    assert "warning: training.mixed_precision is true" in checked.stderr
    assert "`start` refuses it here" in checked.stderr


@pytest.mark.slow
def test_auto_workers_on_a_machine_without_gpus_record_their_trials_on_the_cpu(
    run_cli, write_space, storage
):
    result = run_cli("start", str(write_space()), "--storage", storage, "--workers", "auto")
    assert result.returncode == 0, result.stdout + result.stderr
    trials = load(storage).get_trials(deepcopy=False)
    finished = [t for t in trials if t.state.name in ("COMPLETE", "PRUNED")]
    assert len(finished) == 3
    assert {records.device_of(t) for t in trials} == {"cpu"}
    assert "worker process(es) here" in result.stdout


def test_status_shows_the_devices_once_a_trial_ran_on_a_gpu(run_cli, storage):
    space = space_from_dict(TINY_SPACE, "space.yaml")
    synthetic_study(space, storage, 6, devices=("cpu",))
    plain = run_cli("status", "--storage", storage)
    assert plain.returncode == 0, plain.stderr
    [header] = [line for line in plain.stdout.splitlines() if "┃ study" in line]
    assert header.endswith("last activity ┃")  # a CPU-only storage keeps its table
    gpu_space = space_from_dict({**TINY_SPACE, "name": "on-gpus"}, "space.yaml")
    synthetic_study(gpu_space, storage, 6, devices=("gpu:0", "gpu:1"))
    table = run_cli("status", "--storage", storage)
    assert table.returncode == 0, table.stderr
    [header] = [line for line in table.stdout.splitlines() if "┃ study" in line]
    assert header.rstrip(" ┃").endswith("devices")
    rows = {line.split("│")[1].strip(): line for line in table.stdout.splitlines() if "│" in line}
    assert rows["on-gpus"].rstrip(" │").endswith("gpu:0 gpu:1")
    assert rows["tiny"].rstrip(" │").endswith("cpu")
    report = json.loads(run_cli("status", "--storage", storage, "--format", "json").stdout)
    assert {s["name"]: s["devices"] for s in report["studies"]} == {
        "tiny": ["cpu"],
        "on-gpus": ["gpu:0", "gpu:1"],
    }


def _shown(storage: str, devices: tuple[str, ...]) -> str:
    """What the live progress prints of a study whose workers run on `devices`."""
    study = synthetic_study(space_from_dict(TINY_SPACE, "space.yaml"), storage, 2)
    screen = io.StringIO()
    console = Console(file=screen, width=200)
    with StudyProgress(console, "val_loss", "minimize") as progress:
        progress(
            events.StudyRunning(
                study, summarize(study), 4, storage, len(devices), False, devices=devices
            )
        )
        progress(events.TrialStarted(2, {"units": 8}))
        attrs = {records.EPOCHS_TRAINED: 3, records.TRAIN_SECONDS: 0.5, records.DEVICE: devices[-1]}
        progress(events.TrialFinished(2, "COMPLETE", 0.5, {"units": 8}, attrs))
    return screen.getvalue()


def test_the_progress_names_the_gpus_and_each_trials_device(storage):
    shown = _shown(storage, ("gpu:0", "gpu:1"))
    assert "2 worker process(es) here on gpu:0, gpu:1, each sampling" in shown
    assert "trial    2 complete val_loss=0.5 (3 epochs, 0.5 s, gpu:1)" in shown


def test_the_progress_of_cpu_workers_is_as_before(storage):
    shown = _shown(storage, ("cpu", "cpu"))
    assert "2 worker process(es) here, each sampling" in shown
    assert "trial    2 complete val_loss=0.5 (3 epochs, 0.5 s)" in shown


@pytest.mark.slow
def test_auto_workers_on_hyperband_are_the_one_worker_it_takes(run_cli, write_space, storage):
    hyperband = {"training": {"max_epochs": 3}, "search": {"backend": "hyperband", "factor": 3}}
    space = write_space(**hyperband)
    result = run_cli("start", str(space), "--storage", storage, "--workers", "auto")
    assert result.returncode == 0, result.stdout + result.stderr
    assert "1 worker process(es) here" in result.stdout
    trials = load(storage).get_trials(deepcopy=False)
    assert trials and {records.device_of(t) for t in trials} == {"cpu"}


@pytest.mark.slow
@pytest.mark.parametrize("engine", ["epoch_loop", "fit"])
def test_mixed_precision_trains_under_mixed_float16_where_a_gpu_is_seen(engine):
    """The policy is Keras' own and runs on a CPU too (slowly), so the path a GPU worker
    takes is trained here for real: told it sees a GPU, the context takes mixed_float16 and
    compile wraps the optimizer in loss scaling; told it sees none, float32 stays."""
    import keras
    import optuna

    from dlboost_search._tf import import_tensorflow_quietly
    from dlboost_search.spaces import suggest
    from dlboost_search.training import TrainingRecord
    from dlboost_search.trial import TrialContext

    import_tensorflow_quietly(None)
    changes = {"training": {"mixed_precision": True, "engine": engine}}
    space = space_from_dict(deep_update(TINY_SPACE, changes), "space.yaml")
    try:
        TrialContext(space, "test", gpu=False)
        assert keras.mixed_precision.global_policy().name == "float32"
        context = TrialContext(space, "test", gpu=True)
        assert keras.mixed_precision.global_policy().name == "mixed_float16"
        trial = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=0)).ask()
        params = space.resolve(suggest(trial, space))
        model = context.model(params, 0)
        record = TrainingRecord()
        value = context.fit(model, params, 0, record=record)
        assert type(model.optimizer).__name__ == "LossScaleOptimizer"
        assert model.layers[1].compute_dtype == "float16"
        assert 0 < value < 10 and record.as_attrs()["epochs_trained"] >= 1
    finally:
        keras.mixed_precision.set_global_policy("float32")
