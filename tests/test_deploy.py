"""deploy/: the worker image definition, the Kubernetes manifests and the Slurm script, checked
without a cluster or a container engine (CI has neither): each manifest is read into the
kubernetes client's models and every key it writes must be a field of its model (the client
itself drops unknown keys), KubeRay's RayJob is checked against the fields we use, the command
lines are parsed by the real CLI, and the workers' wait for their study runs against SQLite."""

from __future__ import annotations

import json
import os
import re
import shlex
import shutil
import signal
import subprocess
import sys
import time
import tomllib
from pathlib import Path
from typing import Any

import kubernetes.client.models as k8s
import pytest
import yaml
from kubernetes.utils import parse_quantity
from sqlalchemy.engine import make_url
from typer.main import get_command

from dlboost_search.cli import app
from dlboost_search.devices import WORKER_MEMORY_MB
from dlboost_search.errors import Interrupted, SearchAborted, SpaceError, StorageError
from dlboost_search.pool import SHUTDOWN_GRACE_S
from dlboost_search.spaces import load_space, space_from_dict
from dlboost_search.testing import synthetic_study

ROOT = Path(__file__).resolve().parents[1]
DEPLOY = ROOT / "deploy"
MANIFESTS = sorted((DEPLOY / "kubernetes").glob("*.yaml"))
MODELS = {("batch/v1", "Job"): "V1Job", ("v1", "Secret"): "V1Secret"}
SCRIPT = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["scripts"]


def documents(path: Path) -> list[dict[str, Any]]:
    return [d for d in yaml.safe_load_all(path.read_text()) if d is not None]


def all_documents() -> list[tuple[str, dict[str, Any]]]:
    return [(path.name, doc) for path in MANIFESTS for doc in documents(path)]


def of_kind(kind: str) -> list[tuple[str, dict[str, Any]]]:
    return [(name, doc) for name, doc in all_documents() if doc["kind"] == kind]


# --- every key a field of its model ----------------------------------------------------------


def unknown_keys(data: Any, type_name: str, where: str) -> list[str]:
    """The keys in `data` that the kubernetes client's model `type_name` (or a model inside it)
    has no field for, as paths. The client's own from_dict drops such keys without a word,
    and accepts its Python names (restart_policy) that the API server would not."""
    for wrapper in ("Optional", "List"):
        if type_name.startswith(f"{wrapper}["):
            inner = type_name[len(wrapper) + 1 : -1]
            if wrapper == "Optional":
                return unknown_keys(data, inner, where)
            return [
                k for i, item in enumerate(data) for k in unknown_keys(item, inner, f"{where}[{i}]")
            ]
    if type_name.startswith("Dict["):
        inner = type_name[len("Dict[") : -1].split(", ", 1)[1]
        return [k for key, v in data.items() for k in unknown_keys(v, inner, f"{where}.{key}")]
    model = getattr(k8s, type_name, None)
    if model is None:  # str, int, bool, object...
        return []
    fields = {model.attribute_map[a]: t for a, t in model.openapi_types.items()}
    found = []
    for key, value in data.items():
        if key not in fields:
            found.append(f"{where}.{key}")
        elif value is not None:
            found += unknown_keys(value, fields[key], f"{where}.{key}")
    return found


def check_model(data: dict[str, Any], type_name: str, where: str) -> Any:
    """`data` read into the client's model `type_name`: a wrong type raises (the models are
    pydantic), an unknown key fails."""
    assert unknown_keys(data, type_name, where) == []
    return getattr(k8s, type_name).from_dict(data)


# KubeRay's custom resources are not in the client: the fields this project's manifests use,
# each checked for where it may stand (ray.io/v1, KubeRay 1.1 and later). A field used that is
# not listed here fails, so a new one is looked up in KubeRay's types before it is added.
RAYJOB_SPEC = {
    "entrypoint",
    "shutdownAfterJobFinishes",
    "ttlSecondsAfterFinished",
    "rayClusterSpec",
}
RAYCLUSTER_SPEC = {"rayVersion", "headGroupSpec", "workerGroupSpecs"}
HEAD_GROUP = {"rayStartParams", "template"}
WORKER_GROUP = {"groupName", "replicas", "minReplicas", "maxReplicas", "rayStartParams", "template"}


def rayjob_problems(doc: dict[str, Any], where: str) -> list[str]:
    """What is wrong in a RayJob, for the fields we rely on: a key out of place or missing, a
    value of the wrong type. Its pod templates are checked as the client's V1PodTemplateSpec."""
    problems = [f"{where}.{k}" for k in doc if k not in ("apiVersion", "kind", "metadata", "spec")]
    problems += unknown_keys(doc["metadata"], "V1ObjectMeta", f"{where}.metadata")
    spec = doc["spec"]
    problems += [f"{where}.spec.{k}" for k in spec if k not in RAYJOB_SPEC]
    if not isinstance(spec.get("entrypoint"), str):
        problems.append(f"{where}.spec.entrypoint: missing, or not a string")
    cluster = spec.get("rayClusterSpec", {})
    problems += [f"{where}.spec.rayClusterSpec.{k}" for k in cluster if k not in RAYCLUSTER_SPEC]
    groups = [("headGroupSpec", cluster.get("headGroupSpec"), HEAD_GROUP)]
    groups += [
        (f"workerGroupSpecs[{i}]", group, WORKER_GROUP)
        for i, group in enumerate(cluster.get("workerGroupSpecs") or [None])
    ]
    for name, group, allowed in groups:
        at = f"{where}.spec.rayClusterSpec.{name}"
        if not isinstance(group, dict) or not {"rayStartParams", "template"} <= set(group):
            problems.append(f"{at}: missing, or lacks rayStartParams or template")
            continue
        problems += [f"{at}.{k}" for k in group if k not in allowed]
        # map[string]string in KubeRay: the API server refuses `num-cpus: 0`.
        problems += [
            f"{at}.rayStartParams.{k}: not a string"
            for k, v in group["rayStartParams"].items()
            if not isinstance(v, str)
        ]
        problems += unknown_keys(group["template"], "V1PodTemplateSpec", f"{at}.template")
        k8s.V1PodTemplateSpec.from_dict(group["template"])
        if name != "headGroupSpec":
            counts = [group.get(k) for k in ("minReplicas", "replicas", "maxReplicas")]
            if not all(isinstance(c, int) for c in counts) or counts != sorted(counts):
                problems.append(f"{at}: minReplicas <= replicas <= maxReplicas, integers")
    return problems


@pytest.mark.parametrize("path", MANIFESTS, ids=[p.name for p in MANIFESTS])
def test_each_manifest_reads_into_the_kubernetes_models(path: Path) -> None:
    for doc in documents(path):
        key = (doc["apiVersion"], doc["kind"])
        if key == ("ray.io/v1", "RayJob"):
            assert rayjob_problems(doc, path.name) == []
        else:
            assert key in MODELS, f"{path.name}: no model for {key}; add it to MODELS"
            check_model(doc, MODELS[key], path.name)


def test_a_misspelt_or_misplaced_key_fails() -> None:
    """The checks above can fail: keys the client would silently drop, a wrong type, a RayJob
    field out of place."""
    (_, job), *_ = of_kind("Job")
    pod = job["spec"]["template"]["spec"]
    pod["terminationGracePeriodSecond"] = 150  # misspelt
    pod["containers"][0]["restart_policy"] = "Never"  # the client's Python name
    job["spec"]["template"]["restartPolicy"] = "Never"  # one level too high
    assert sorted(unknown_keys(job, "V1Job", "job")) == [
        "job.spec.template.restartPolicy",
        "job.spec.template.spec.containers[0].restart_policy",
        "job.spec.template.spec.terminationGracePeriodSecond",
    ]
    with pytest.raises(ValueError, match="parallelism"):
        k8s.V1Job.from_dict({**job, "spec": {**job["spec"], "parallelism": "eight"}})

    ((_, rayjob),) = of_kind("RayJob")
    cluster = rayjob["spec"]["rayClusterSpec"]
    cluster["workerGroupSpecs"][0]["replica"] = 2
    cluster["headGroupSpec"]["rayStartParams"]["num-cpus"] = 0
    rayjob["spec"]["workerGroupSpecs"] = cluster.pop("workerGroupSpecs")
    assert rayjob_problems(rayjob, "r") == [
        "r.spec.workerGroupSpecs",
        "r.spec.rayClusterSpec.headGroupSpec.rayStartParams.num-cpus: not a string",
        "r.spec.rayClusterSpec.workerGroupSpecs[0]: missing, or lacks rayStartParams or template",
    ]
    rayjob["spec"]["rayClusterSpec"]["workerGroupSpecs"] = rayjob["spec"].pop("workerGroupSpecs")
    assert rayjob_problems(rayjob, "r")[-1] == "r.spec.rayClusterSpec.workerGroupSpecs[0].replica"


# --- what the manifests promise ----------------------------------------------------------------


def pod_specs() -> list[tuple[str, dict[str, Any]]]:
    specs = [(name, doc["spec"]["template"]["spec"]) for name, doc in of_kind("Job")]
    for name, doc in of_kind("RayJob"):
        cluster = doc["spec"]["rayClusterSpec"]
        groups = [cluster["headGroupSpec"], *cluster["workerGroupSpecs"]]
        specs += [(name, group["template"]["spec"]) for group in groups]
    return specs


def containers_of(pod: dict[str, Any]) -> list[dict[str, Any]]:
    return pod.get("initContainers", []) + pod["containers"]


def test_every_secret_a_pod_reads_is_in_the_example_secret_without_a_real_password() -> None:
    ((_, secret),) = of_kind("Secret")
    keys = {(secret["metadata"]["name"], key) for key in secret["stringData"]}
    for name, spec in pod_specs():
        for container in containers_of(spec):
            for env in container.get("env", []):
                ref = env.get("valueFrom", {}).get("secretKeyRef")
                if ref:
                    assert (ref["name"], ref["key"]) in keys, f"{name}: {ref}"
    assert make_url(secret["stringData"]["url"]).password == secret["stringData"]["password"]
    assert secret["stringData"]["password"] == "CHANGE-ME"


def expanded(args: list[str], container: dict[str, Any]) -> list[str]:
    """`args` as Kubernetes runs them: $(NAME) replaced by the container's variable NAME (one
    from a Secret by a stand-in). Kubernetes leaves an unknown $(NAME) as it is, so that fails."""
    env = {e["name"]: e.get("value", f"<{e['name']}>") for e in container.get("env", [])}

    def value(match: re.Match[str]) -> str:
        assert match[1] in env, f"$({match[1]}) is not a variable of {container['name']}"
        return env[match[1]]

    return [re.sub(r"\$\(([A-Za-z_][A-Za-z0-9_]*)\)", value, arg) for arg in args]


def parsed(argv: list[str]) -> dict[str, Any]:
    """The parameters `dlboost-search ARGV` gets, parsed by the real CLI without running it:
    an unknown option or a bad value raises click's UsageError."""
    command, parent = cli_command(argv[0])
    return command.make_context(argv[0], list(argv[1:]), parent=parent).params


def cli_command(name: str) -> tuple[Any, Any]:
    """The CLI's click command `name`, and the context of `dlboost-search NAME` it runs in."""
    group = get_command(app)
    context = group.make_context("dlboost-search", [name])
    command = group.get_command(context, name)
    assert command is not None, f"dlboost-search has no command {name!r}"
    return command, context


def job_containers() -> list[tuple[str, dict[str, Any], dict[str, Any]]]:
    """(file, job spec, container) for each container of the Jobs that runs dlboost-search."""
    return [
        (name, doc["spec"], container)
        for name, doc in of_kind("Job")
        for container in doc["spec"]["template"]["spec"]["containers"]
        if "command" not in container  # the image's entrypoint, dlboost-search
    ]


def test_each_job_runs_a_command_line_that_dlboost_search_accepts() -> None:
    commands = set()
    for name, job, container in job_containers():
        argv = expanded(container["args"], container)
        params = parsed(argv)
        commands.add(argv[0])
        assert params["storage"] is None, f"{name}: the URL comes from DLBOOST_STORAGE"
        assert "DLBOOST_STORAGE" in {e["name"] for e in container["env"]}
        if argv[0] == "start":  # the space file, from the ConfigMap the docs create
            (mount,) = container["volumeMounts"]
            (volume,) = job["template"]["spec"]["volumes"]
            assert Path(params["space_file"]).parent == Path(mount["mountPath"])
            assert (volume["name"], volume["configMap"]["name"]) == (mount["name"], "dlboost-space")
    assert commands == {"start", "worker"}
    with pytest.raises(Exception, match="No such option: --worker"):  # click's UsageError
        parsed(["worker", "digits-mlp", "--worker", "4"])


def test_each_job_fits_its_workers_and_lets_them_close_their_trials() -> None:
    """--workers as the CPU limit (dlboost-search counts the node's cores, not the pod's), the
    memory the workers need, a grace period longer than the workers get to close their
    trials, and a failure policy that retries crashes but not bad input."""
    for name, job, container in job_containers():
        params = parsed(expanded(container["args"], container))
        workers = int(params["workers"])
        limits = container["resources"]["limits"]
        assert container["resources"]["requests"] == limits, name  # Guaranteed: not evicted first
        assert parse_quantity(limits["cpu"]) == workers, name
        assert parse_quantity(limits["memory"]) >= workers * WORKER_MEMORY_MB * 2**20, name
        pod = job["template"]["spec"]
        assert pod["terminationGracePeriodSeconds"] > SHUTDOWN_GRACE_S, name
        assert pod["restartPolicy"] == "Never", name  # what podFailurePolicy requires
        rules = job["podFailurePolicy"]["rules"]
        (fail,) = [r["onExitCodes"] for r in rules if r["action"] == "FailJob"]
        assert fail["containerName"] == container["name"], name
        assert set(fail["values"]) == {SpaceError.exit_code, SearchAborted.exit_code}, name
        assert StorageError.exit_code not in fail["values"]  # a database not up yet: retried
        assert Interrupted.exit_code not in fail["values"]
        assert {"type": "DisruptionTarget"} in [
            c for r in rules for c in r.get("onPodConditions", [])
        ]
        assert job["backoffLimit"] >= 1, name


def test_the_worker_job_runs_parallel_pods_of_one_image() -> None:
    (job,) = [doc for name, doc in of_kind("Job") if name == "worker-job.yaml"]
    assert job["spec"]["parallelism"] > 1
    assert "completions" not in job["spec"]  # any pod done means the study is done
    images = {
        c["image"]
        for _, doc in of_kind("Job")
        for c in containers_of(doc["spec"]["template"]["spec"])
    }
    assert len(images) == 1


def test_the_kuberay_entrypoint_is_a_worker_whose_url_holds_no_password() -> None:
    ((_, rayjob),) = of_kind("RayJob")
    argv = shlex.split(rayjob["spec"]["entrypoint"])
    assert argv[:2] == [next(iter(SCRIPT)), "worker"]
    options = dict(zip(argv[3::2], argv[4::2], strict=True))
    assert make_url(options["--storage"]).password is None
    cluster = rayjob["spec"]["rayClusterSpec"]
    cpus = sum(
        group["replicas"]
        * parse_quantity(group["template"]["spec"]["containers"][0]["resources"]["limits"]["cpu"])
        for group in cluster["workerGroupSpecs"]
    )
    assert int(options["--workers"]) <= cpus
    for group in [cluster["headGroupSpec"], *cluster["workerGroupSpecs"]]:
        env = {e["name"]: e for e in group["template"]["spec"]["containers"][0]["env"]}
        assert env["PGPASSWORD"]["valueFrom"]["secretKeyRef"]["key"] == "password"
    worker, _ = cli_command("worker")
    if "--ray" not in {option for param in worker.params for option in param.opts}:
        pytest.skip("`worker --ray` comes with the Ray workers (issue 19); the rest is checked")
    parsed(argv[1:])


# --- the workers' wait for their study, run for real -------------------------------------------


def test_the_init_container_waits_until_the_study_exists(tmp_path: Path) -> None:
    """The worker Job's init container, run as its shell runs it: it waits while the storage
    does not exist and while it lacks the study, and ends once the study is there."""
    (job,) = [doc for name, doc in of_kind("Job") if name == "worker-job.yaml"]
    (init,) = job["spec"]["template"]["spec"]["initContainers"]
    script = init["args"][0].replace("sleep 10", "sleep 0.2")
    assert script != init["args"][0]
    study = expanded(["$(STUDY)"], init)[0]
    bin_dir = Path(sys.executable).parent
    assert shutil.which(next(iter(SCRIPT)), path=str(bin_dir)), "dlboost-search beside python"
    url = f"sqlite:///{tmp_path / 'studies.db'}"
    env = {
        **os.environ,
        "PATH": f"{bin_dir}{os.pathsep}{os.environ['PATH']}",
        "STUDY": study,
        "DLBOOST_STORAGE": url,
    }
    log = tmp_path / "init.log"
    with log.open("w") as out:
        process = subprocess.Popen(
            [*init["command"], script], env=env, stdout=out, stderr=subprocess.STDOUT,
            start_new_session=True, stdin=subprocess.DEVNULL,
        )  # fmt: skip
    try:
        waits_for(log, 1)
        assert "does not exist" in log.read_text()  # status says why, on stderr
        space = load_space(ROOT / "search_spaces" / "digits_mlp.yaml")
        synthetic_study(space_from_dict({**space.to_dict(), "name": "other"}, "other.yaml"), url, 0)
        waits_for(log, log.read_text().count("waiting for study") + 2)
        assert process.poll() is None
        synthetic_study(space, url, 0)
        assert space.name == study
        assert process.wait(timeout=60) == 0
    finally:
        if process.poll() is None:
            os.killpg(process.pid, signal.SIGKILL)  # the shell and its sleep, started here
            process.wait()


def waits_for(log: Path, count: int, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while log.read_text().count("waiting for study") < count:
        assert time.monotonic() < deadline, log.read_text()
        time.sleep(0.1)


# --- the image definition ----------------------------------------------------------------------


def dockerfile() -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) of deploy/Dockerfile, continuation lines joined."""
    text = re.sub(r"\\\n", " ", (DEPLOY / "Dockerfile").read_text())
    lines = [line.strip() for line in text.splitlines()]
    return [
        (line.split(None, 1)[0].upper(), line.split(None, 1)[1])
        for line in lines
        if line and not line.startswith("#")
    ]


def ignored(path: str, patterns: list[str]) -> bool:
    """Whether Docker leaves `path` (relative to the context) out, by .dockerignore rules:
    the last matching pattern decides, `!` includes again, a folder's rule covers its files."""
    verdict = False
    for pattern in patterns:
        include = pattern.startswith("!")
        regex = re.escape(pattern.lstrip("!/")).replace(r"\*\*/", "(.*/)?").replace(r"\*", "[^/]*")
        parts = path.split("/")
        if any(re.fullmatch(regex, "/".join(parts[:n])) for n in range(1, len(parts) + 1)):
            verdict = not include
    return verdict


def test_the_image_copies_files_that_exist_and_are_sent_and_runs_the_project_script() -> None:
    steps = dockerfile()
    ignore = [
        line.strip()
        for line in (DEPLOY / "Dockerfile.dockerignore").read_text().splitlines()
        if line.strip() and not line.startswith("#")
    ]
    copies = [args.split() for step, args in steps if step == "COPY"]
    assert copies
    for *sources, _ in copies:
        for source in sources:
            assert not source.startswith("--"), "no COPY --from: one stage"
            assert (ROOT / source).exists(), source
            files = [source] if (ROOT / source).is_file() else [
                str(p.relative_to(ROOT)) for p in (ROOT / source).rglob("*.py")
            ]  # fmt: skip
            assert files and not any(ignored(f, ignore) for f in files), source
    assert ignored(".venv/bin/python", ignore) and ignored("src/x/__pycache__/a.pyc", ignore)

    args = {k: v for step, a in steps if step == "ARG" for k, _, v in [a.partition("=")]}
    (base,) = [a for step, a in steps if step == "FROM"]
    assert args[base.strip("${}")] == "python:3.11-slim"
    extras = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"][
        "optional-dependencies"
    ]
    assert set(args["EXTRAS"].split(",")) <= set(extras)

    (entrypoint,) = [json.loads(a) for step, a in steps if step == "ENTRYPOINT"]
    assert entrypoint[:2] == ["tini", "--"] and entrypoint[2:] == [next(iter(SCRIPT))]
    assert SCRIPT[entrypoint[2]] == "dlboost_search.cli:main"
    assert any(step == "RUN" and re.search(r"apt-get install .*\btini\b", a) for step, a in steps)
    (user,) = [a for step, a in steps if step == "USER"]
    assert all(part.isdigit() and int(part) > 0 for part in user.split(":"))  # runAsNonRoot


# --- the Slurm script --------------------------------------------------------------------------


def test_the_slurm_script_runs_a_worker_that_dlboost_search_accepts() -> None:
    text = (DEPLOY / "worker.slurm").read_text()
    (srun,) = [line for line in text.splitlines() if line.startswith("srun ")]
    argv = shlex.split(srun)
    (at,) = [i for i, word in enumerate(argv) if Path(word).name == next(iter(SCRIPT))]
    params = parsed(argv[at + 1 :])
    assert argv[at + 1] == "worker" and params["storage"] is None
    assert re.search(r"^export DLBOOST_STORAGE=\S+://", text, re.MULTILINE)
    cpus = int(re.search(r"^#SBATCH --cpus-per-task=(\d+)", text, re.MULTILINE)[1])
    assert int(params["workers"]) <= cpus


# --- the docs ------------------------------------------------------------------------------------


def test_the_docs_create_the_configmap_and_secret_the_manifests_read() -> None:
    docs = (ROOT / "docs" / "many-machines.md").read_text()
    (configmap,) = re.findall(r"kubectl create configmap (\S+) --from-file=([^=\s]+)=", docs)
    secret = re.search(
        r"kubectl create secret generic (\S+) \\\n((?:\s+--from-literal=.*\n)+)", docs
    )
    assert secret, "the docs create the Secret"
    created = {(secret[1], key) for key in re.findall(r"--from-literal=([\w-]+)=", secret[2])}
    ((_, example),) = of_kind("Secret")
    assert created == {(example["metadata"]["name"], key) for key in example["stringData"]}
    ((_, study_job),) = [(n, d) for n, d in of_kind("Job") if n == "study-job.yaml"]
    pod = study_job["spec"]["template"]["spec"]
    (container,) = pod["containers"]
    (volume,) = pod["volumes"]
    assert volume["configMap"]["name"] == configmap[0]
    assert Path(container["args"][1]).name == configmap[1]
    images = {c["image"] for _, spec in pod_specs() for c in containers_of(spec)}
    assert all(re.search(rf"\b{re.escape(image)}\b", docs) for image in images)
