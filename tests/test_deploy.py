"""The deploy manifests hold what their tools check, and every command in them points at an
entry point that exists."""

from __future__ import annotations

import json
import os
import shlex
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest
import yaml

REPO = Path(__file__).resolve().parents[1]
DEPLOY = REPO / "deploy"


def test_ray_cluster_yaml_passes_rays_own_validator() -> None:
    pytest.importorskip("jsonschema")
    from ray.autoscaler._private.util import prepare_config, validate_config

    raw = yaml.safe_load((DEPLOY / "ray-cluster.yaml").read_text())
    config = prepare_config(raw)  # defaults filled in, as `ray up` does before validating
    validate_config(config)
    assert config["head_node_type"] in config["available_node_types"]
    broken = {**config, "max_worker": 3}  # a misspelt field: the validator must object
    with pytest.raises(Exception, match="max_worker"):
        validate_config(broken)


RAYJOB_SPEC = {"entrypoint", "rayClusterSpec", "clusterSelector", "submissionMode",
               "shutdownAfterJobFinishes", "ttlSecondsAfterFinished", "activeDeadlineSeconds",
               "runtimeEnvYAML", "suspend", "submitterPodTemplate", "submitterConfig",
               "entrypointNumCpus", "entrypointNumGpus", "entrypointResources", "jobId",
               "metadata", "backoffLimit", "managedBy", "deletionStrategy"}
CLUSTER_SPEC = {"rayVersion", "headGroupSpec", "workerGroupSpecs", "enableInTreeAutoscaling",
                "autoscalerOptions", "headServiceAnnotations", "suspend", "managedBy"}
GROUP_SPEC = {"groupName", "replicas", "minReplicas", "maxReplicas", "rayStartParams",
              "template", "numOfHosts", "scaleStrategy", "suspend", "idleTimeoutSeconds"}


def test_rayjob_uses_only_rayjob_fields_and_runs_the_job_entry_point() -> None:
    job = yaml.safe_load((DEPLOY / "rayjob.yaml").read_text())
    assert (job["apiVersion"], job["kind"]) == ("ray.io/v1", "RayJob")
    spec = job["spec"]
    assert set(spec) <= RAYJOB_SPEC, set(spec) - RAYJOB_SPEC
    cluster = spec["rayClusterSpec"]
    assert set(cluster) <= CLUSTER_SPEC, set(cluster) - CLUSTER_SPEC
    assert {"rayStartParams", "template"} <= set(cluster["headGroupSpec"])
    groups = cluster["workerGroupSpecs"]
    for group in groups:
        assert set(group) <= GROUP_SPEC, set(group) - GROUP_SPEC
        assert group["minReplicas"] <= group["replicas"] <= group["maxReplicas"]
    assert any(c["resources"]["limits"].get("nvidia.com/gpu")
               for g in groups for c in g["template"]["spec"]["containers"])
    import ray

    assert cluster["rayVersion"] == ray.__version__
    command = shlex.split(spec["entrypoint"])
    assert command[0] == "python" and command[1] == "/app/jobs/ray_job.py"
    assert (REPO / "jobs" / "ray_job.py").is_file()


def test_dockerfile_copies_what_exists_and_installs_real_extras() -> None:
    lines = (DEPLOY / "Dockerfile").read_text().splitlines()
    copies = [line.split()[1:-1] for line in lines if line.startswith("COPY ")]
    for sources in copies:
        for source in sources:
            assert (REPO / source).exists(), source
    project = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
    install = next(line for line in lines if "pip install" in line)
    extras = install.split("'.[")[1].split("]'")[0].split(",")
    assert set(extras) <= set(project["optional-dependencies"]), extras
    cmd = json.loads(next(line for line in lines if line.startswith("CMD "))[4:])
    assert cmd[0] in project["scripts"]


def _fake(folder: Path, name: str, body: str) -> None:
    path = folder / name
    path.write_text(f"#!/usr/bin/env bash\n{body}\n")
    path.chmod(0o755)


def test_spark_submit_wrapper_runs_the_job_entry_point_with_gpu_settings(tmp_path: Path
                                                                          ) -> None:
    _fake(tmp_path, "spark-submit", 'printf "%s\\n" "$@"')
    env = {**os.environ, "PATH": f"{tmp_path}{os.pathsep}{os.environ['PATH']}", "THREADS": "4"}
    proc = subprocess.run([str(DEPLOY / "spark-submit.sh"), "prune.yaml", "--set", "dbp.k=9"],
                          env=env, capture_output=True, text=True, check=True)
    args = proc.stdout.splitlines()
    job = Path(args[args.index("prune.yaml") - 1])
    assert job == REPO / "jobs" / "spark_job.py" and job.is_file()
    assert args[-2:] == ["--set", "engine.threads=4"]
    assert "spark.task.cpus=4" in args and "spark.executorEnv.OMP_NUM_THREADS=4" in args
    assert "spark.executor.resource.gpu.amount=1" in args
    discovery = next(a for a in args if a.startswith("spark.executor.resource.gpu.discovery"))
    assert (DEPLOY / Path(discovery.split("=")[1]).name).is_file()


def test_gpu_discovery_script_prints_sparks_format(tmp_path: Path) -> None:
    _fake(tmp_path, "nvidia-smi", 'printf "0\\n1\\n"')
    env = {**os.environ, "PATH": f"{tmp_path}{os.pathsep}{os.environ['PATH']}"}
    proc = subprocess.run([str(DEPLOY / "get_gpus.sh")], env=env, capture_output=True,
                          text=True, check=True)
    assert json.loads(proc.stdout) == {"name": "gpu", "addresses": ["0", "1"]}


@pytest.mark.parametrize("job", ["spark_job.py", "ray_job.py"])
def test_job_entry_points_explain_themselves(job: str) -> None:
    proc = subprocess.run([sys.executable, str(REPO / "jobs" / job), "--help"],
                          capture_output=True, text=True, cwd=REPO, timeout=120,
                          env={**os.environ, "SPARK_LOCAL_IP": "127.0.0.1"})
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "config" in proc.stdout.lower()
