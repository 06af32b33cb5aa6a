"""Offline checks of the Kubernetes manifests in k8s/: rendering, strict schema validation,
pod security, batch limits, the custom resources' fields, and every command line in them run
against the real CLI (so a renamed flag or config key breaks the build, not the cluster)."""

from __future__ import annotations

import copy
import json
import os
import re
import shlex
import shutil
import subprocess
import sys
from pathlib import Path

import kubernetes_validate
import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]
K8S = ROOT / "k8s"
OVERLAYS = sorted(p.name for p in (K8S / "overlays").iterdir() if (p / "kustomization.yaml").is_file())
# the oldest Kubernetes we claim (docs/kubernetes.md) and the newest schema bundled
K8S_VERSIONS = ("1.30.0", kubernetes_validate.latest_version())
KUBECTL = shutil.which("kubectl")
VENV_BIN = Path(sys.executable).parent
IMAGE_CODE = "/opt/recsys"          # where docker/ puts the repository
IMAGE_CONF = "/etc/recsys/conf"     # where the ConfigMap is mounted
CORE_GROUPS = ("v1", "batch/v1", "rbac.authorization.k8s.io/v1", "apps/v1")
COMPONENT = "app.kubernetes.io/component"
STAGES = ("fetch", "prepare", "train", "export", "index", "evaluate")


def _kustomize(overlay: str) -> list[dict]:
    out = subprocess.run(
        [KUBECTL, "kustomize", str(K8S / "overlays" / overlay)],   # as users type it: no --load-restrictor
        capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, f"kustomize {overlay} failed:\n{out.stderr}"
    return [d for d in yaml.safe_load_all(out.stdout) if d]


@pytest.fixture(scope="module")
def rendered() -> dict[str, list[dict]]:
    if KUBECTL is None:
        pytest.skip("kubectl is not installed: overlays are not rendered (the Python checks of "
                    "test_kustomizations_reference_existing_files and test_base_resources_validate still ran)")
    return {overlay: _kustomize(overlay) for overlay in OVERLAYS}


def _by_kind(docs: list[dict], kind: str) -> list[dict]:
    return [d for d in docs if d["kind"] == kind]


def _one(docs: list[dict], kind: str, name: str) -> dict:
    found = [d for d in docs if d["kind"] == kind and d["metadata"]["name"] == name]
    assert len(found) == 1, f"expected one {kind}/{name}, found {len(found)}"
    return found[0]


def _validate(obj: dict) -> None:
    for version in K8S_VERSIONS:
        try:
            kubernetes_validate.validate(obj, version, strict=True)
        except kubernetes_validate.ValidationError as err:
            raise AssertionError(f"{obj['kind']}/{obj['metadata'].get('name')} is invalid for Kubernetes "
                                 f"{version}: {err.message} at {'.'.join(map(str, err.path))}") from None


def _as_pod(name: str, template: dict) -> dict:
    return {"apiVersion": "v1", "kind": "Pod", "metadata": {"name": name, **template.get("metadata", {})},
            "spec": template["spec"]}


def _spark_pod(app: dict, role: str) -> dict:
    """The pod the spark-operator builds for ``role`` (driver/executor), from the fields it copies."""
    spec, part = app["spec"], app["spec"][role]
    mounts = {v["name"] for v in part.get("volumeMounts", [])}
    container = {
        "name": f"spark-kubernetes-{role}",
        "image": part.get("image", spec["image"]),
        "env": part.get("env", []),
        "volumeMounts": part.get("volumeMounts", []),
        "securityContext": part["securityContext"],
        "resources": {"limits": {"cpu": str(part["coreLimit"])}},
    }
    pod_spec = {
        "containers": [container],
        "securityContext": part["podSecurityContext"],
        "volumes": [v for v in spec.get("volumes", []) if v["name"] in mounts],
    }
    if part.get("serviceAccount"):
        pod_spec["serviceAccountName"] = part["serviceAccount"]
    return {"apiVersion": "v1", "kind": "Pod", "metadata": {"name": f"{app['metadata']['name']}-{role}"},
            "spec": pod_spec}


def _pods(docs: list[dict]) -> list[dict]:
    """Every pod an overlay would run, as Pod objects."""
    pods = []
    for d in docs:
        if d["kind"] in ("Job", "Deployment"):
            pods.append(_as_pod(d["metadata"]["name"], d["spec"]["template"]))
        elif d["kind"] == "MPIJob":
            for role, rs in d["spec"]["mpiReplicaSpecs"].items():
                pods.append(_as_pod(f"{d['metadata']['name']}-{role.lower()}", rs["template"]))
        elif d["kind"] == "SparkApplication":
            pods += [_spark_pod(d, "driver"), _spark_pod(d, "executor")]
        elif d["kind"] == "ConfigMap" and "executor-pod-template.yaml" in d.get("data", {}):
            template = yaml.safe_load(d["data"]["executor-pod-template.yaml"])
            for c in template["spec"]["containers"]:
                c.setdefault("image", "recsys")   # Spark fills in image and resources
                c.setdefault("resources", {"requests": {"cpu": "1", "memory": "1Gi"},
                                           "limits": {"cpu": "1", "memory": "1Gi"}})
            template["metadata"]["name"] = "spark-executor-template"
            pods.append(template)
    return pods


# ------------------------------------------------------------------ without kubectl


def _kustomizations() -> list[Path]:
    return sorted(K8S.rglob("kustomization.yaml"))


def test_kustomizations_reference_existing_files():
    assert {"cpu-small", "gpu"} <= set(OVERLAYS)
    for kfile in _kustomizations():
        k = yaml.safe_load(kfile.read_text())
        refs = list(k.get("resources", [])) + list(k.get("components", [])) + list(k.get("configurations", []))
        refs += [p["path"] for p in k.get("patches", []) if "path" in p]
        refs += [f.split("=", 1)[-1] for g in k.get("configMapGenerator", []) for f in g.get("files", [])]
        assert refs, f"{kfile} references nothing"
        for ref in refs:
            assert (kfile.parent / ref).exists(), f"{kfile.relative_to(ROOT)}: {ref} does not exist"
        for patch in k.get("patches", []):
            assert "target" in patch or "path" in patch, f"{kfile}: patch without target"


def test_base_resources_validate_strictly():
    # the Python rendering check: every core object the kustomizations list, as written
    checked = 0
    for kfile in _kustomizations():
        for ref in yaml.safe_load(kfile.read_text()).get("resources", []):
            path = kfile.parent / ref
            if path.is_dir():
                continue
            for doc in yaml.safe_load_all(path.read_text()):
                if doc["apiVersion"] in CORE_GROUPS:
                    _validate(doc)
                    checked += 1
    assert checked >= 8


def test_kustomizations_read_files_only_inside_their_own_folder():
    # kustomize's default load restrictor refuses a file outside the kustomization's folder, so
    # `kubectl apply -k` / `kubectl kustomize` work with no extra flag (directories may be anywhere)
    for kfile in _kustomizations():
        k = yaml.safe_load(kfile.read_text())
        files = [p["path"] for p in k.get("patches", []) if "path" in p] + list(k.get("configurations", []))
        files += [f.split("=", 1)[-1] for g in k.get("configMapGenerator", []) for f in g.get("files", [])]
        for ref in files:
            resolved = (kfile.parent / ref).resolve()
            assert kfile.parent.resolve() in resolved.parents, \
                f"{kfile.relative_to(ROOT)}: {ref} is outside {kfile.parent.relative_to(ROOT)}/ (kustomize refuses it)"


def test_copies_inside_k8s_match_their_sources():
    # k8s/base/conf/ is conf/, and the spark-submit component's job defaults are the base's:
    # `make k8s-conf` refreshes both
    for name in ("default.yaml", "ml-100k.yaml", "synth-25m.yaml"):
        assert (K8S / "base/conf" / name).read_text() == (ROOT / "conf" / name).read_text(), \
            f"k8s/base/conf/{name} differs from conf/{name}: run `make k8s-conf`"
    assert (K8S / "components/spark-submit/job-defaults.yaml").read_text() == \
        (K8S / "base/job-defaults.yaml").read_text(), "k8s/components/spark-submit/job-defaults.yaml is stale: run `make k8s-conf`"


def test_yamllint_is_clean():
    out = subprocess.run([str(VENV_BIN / "yamllint"), "-c", str(ROOT / ".yamllint"), "-f", "parsable", "k8s", "conf"],
                         cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stdout + out.stderr


def test_strict_validation_catches_a_misspelled_field():
    # the check itself must be able to fail
    job = yaml.safe_load((K8S / "base/export-job.yaml").read_text())
    bad = copy.deepcopy(job)
    bad["spec"]["backofLimit"] = bad["spec"].pop("backoffLimit")
    _validate(job)
    with pytest.raises(AssertionError, match="invalid"):
        _validate(bad)


# ------------------------------------------------------------------ rendered overlays


def test_every_overlay_renders_every_stage(rendered):
    for overlay, docs in rendered.items():
        stages = {d["metadata"].get("labels", {}).get(COMPONENT) for d in docs}
        assert set(STAGES) <= stages, f"{overlay} lacks stages {set(STAGES) - stages}"
        assert all(d["metadata"].get("namespace") == "recsys" for d in docs), overlay
        names = [(d["kind"], d["metadata"]["name"]) for d in docs]
        assert len(names) == len(set(names)), f"{overlay} renders duplicates"
        assert not any(d["metadata"]["name"] == "recsys" or "image: recsys\n" in yaml.safe_dump(d) for d in docs), \
            f"{overlay}: an image was not rewritten by `images:`"


def test_rendered_core_objects_validate_strictly(rendered):
    for docs in rendered.values():
        core = [d for d in docs if d["apiVersion"] in CORE_GROUPS]
        assert len(core) >= 10
        for d in core:
            _validate(d)


def test_custom_resource_pod_templates_validate_as_pods(rendered):
    for overlay, docs in rendered.items():
        pods = _pods(docs)
        # fetch, export, index, evaluate Jobs; MPIJob launcher + worker; Spark driver + executor
        # (the spark-submit overlay: the prepare Job + the executor pod template); the serve Deployment
        assert len(pods) == 9, (overlay, [p["metadata"]["name"] for p in pods])
        for pod in pods:
            _validate(pod)


def test_every_pod_is_locked_down(rendered):
    for overlay, docs in rendered.items():
        for pod in _pods(docs):
            where = f"{overlay}: pod {pod['metadata']['name']}"
            spec = pod["spec"]
            assert spec["securityContext"]["runAsNonRoot"] is True, where
            assert spec["securityContext"]["runAsUser"] != 0, where
            scratch = {v["name"] for v in spec.get("volumes", []) if "emptyDir" in v}
            for c in spec["containers"]:
                sc = c["securityContext"]
                assert sc["allowPrivilegeEscalation"] is False, where
                assert sc["readOnlyRootFilesystem"] is True, where
                assert sc["capabilities"]["drop"] == ["ALL"], where
                tmp = [m for m in c["volumeMounts"] if m["mountPath"] == "/tmp"]
                assert tmp and tmp[0]["name"] in scratch, f"{where}: /tmp is not an emptyDir"
                assert c["resources"].get("limits"), f"{where}: no resource limits"
                if not pod["metadata"]["name"].startswith(("recsys-prepare-driver", "recsys-prepare-executor")):
                    assert c["resources"].get("requests"), f"{where}: no resource requests"


def test_spark_pods_size_memory_with_overhead(rendered):
    for overlay, docs in rendered.items():
        for app in _by_kind(docs, "SparkApplication"):
            for role in ("driver", "executor"):
                part = app["spec"][role]
                assert part["cores"] >= 1 and part["memory"] and part["memoryOverhead"], (overlay, role)
            assert app["spec"]["executor"]["instances"] >= 1
        for job in _by_kind(docs, "Job"):
            cmd = job["spec"]["template"]["spec"]["containers"][0]["command"]
            if cmd[0] == "spark-submit":
                confs = dict(cmd[i + 1].split("=", 1) for i, a in enumerate(cmd) if a == "--conf")
                assert {"spark.executor.memory", "spark.executor.memoryOverhead", "spark.executor.instances"} <= set(confs)


def test_batch_objects_are_bounded(rendered):
    for overlay, docs in rendered.items():
        for job in _by_kind(docs, "Job"):
            spec = job["spec"]
            where = f"{overlay}: Job/{job['metadata']['name']}"
            assert 0 <= spec["backoffLimit"] <= 5, where
            assert spec["activeDeadlineSeconds"] > 0 and spec["ttlSecondsAfterFinished"] > 0, where
            assert spec["template"]["spec"]["restartPolicy"] == "Never", where
        for mpi in _by_kind(docs, "MPIJob"):
            rp = mpi["spec"]["runPolicy"]
            assert rp["backoffLimit"] >= 0 and rp["activeDeadlineSeconds"] > 0 and rp["ttlSecondsAfterFinished"] > 0
            assert rp["cleanPodPolicy"] in ("Running", "All")
        for app in _by_kind(docs, "SparkApplication"):
            assert app["spec"]["timeToLiveSeconds"] > 0
            assert app["spec"]["restartPolicy"]["type"] in ("Never", "OnFailure")
            assert app["spec"]["restartPolicy"].get("onFailureRetries", 0) <= 5


def test_serve_deployment_and_service(rendered):
    for overlay, docs in rendered.items():
        dep, svc = _one(docs, "Deployment", "recsys-serve"), _one(docs, "Service", "recsys-serve")
        spec = dep["spec"]
        assert spec["replicas"] >= 1 and spec["strategy"]["rollingUpdate"]["maxUnavailable"] == 0, overlay
        pod = spec["template"]
        labels = pod["metadata"]["labels"]
        assert all(labels.get(k) == v for k, v in spec["selector"]["matchLabels"].items()), overlay
        assert all(labels.get(k) == v for k, v in svc["spec"]["selector"].items()), "the Service selects the pods"
        (c,) = pod["spec"]["containers"]
        assert c["command"][:2] == ["recsys", "serve"] and "--wait-for-index" in c["command"]
        assert c["command"][c["command"].index("--config") + 1] == f"{IMAGE_CONF}/pipeline.yaml"
        assert c["command"][c["command"].index("--host") + 1] == "0.0.0.0"
        port = int(c["command"][c["command"].index("--port") + 1])
        (cport,) = c["ports"]
        assert cport["containerPort"] == port and svc["spec"]["ports"][0]["targetPort"] == cport["name"]
        assert c["readinessProbe"]["httpGet"]["path"] == "/readyz"
        assert c["livenessProbe"]["httpGet"]["path"] == "/healthz"
        for probe in ("readinessProbe", "livenessProbe", "startupProbe"):
            assert c[probe]["httpGet"]["port"] == cport["name"], probe
        assert c["resources"]["requests"] and c["resources"]["limits"]
        # the index comes from the data volume: paths.index is relative to the working dir /data
        assert c["workingDir"] == "/data"
        data = [m for m in c["volumeMounts"] if m["mountPath"] == "/data"]
        assert data and data[0]["readOnly"] is True
        vol = next(v for v in pod["spec"]["volumes"] if v["name"] == data[0]["name"])
        assert vol["persistentVolumeClaim"]["claimName"] == _one(docs, "PersistentVolumeClaim", "recsys-data")["metadata"]["name"]
        pipeline = yaml.safe_load(_one(docs, "ConfigMap", "recsys-conf")["data"]["pipeline.yaml"])
        index = (pipeline.get("paths") or {}).get("index") or "runs/ml-100k/index"
        assert not index.startswith("/"), "paths.index must resolve under the data volume"
        # the same pod security as the Jobs
        job = _one(docs, "Job", "recsys-export")["spec"]["template"]["spec"]
        assert pod["spec"]["securityContext"] == job["securityContext"]
        assert c["securityContext"] == job["containers"][0]["securityContext"]
        assert pod["spec"]["serviceAccountName"] == job["serviceAccountName"]
        assert pod["spec"]["automountServiceAccountToken"] is False


def test_mpijob_fields(rendered):
    for overlay, docs in rendered.items():
        mpi = _one(docs, "MPIJob", "recsys-train")
        assert mpi["apiVersion"] == "kubeflow.org/v2beta1"
        spec = mpi["spec"]
        launcher, worker = spec["mpiReplicaSpecs"]["Launcher"], spec["mpiReplicaSpecs"]["Worker"]
        assert launcher["replicas"] == 1
        slots, workers = spec["slotsPerWorker"], worker["replicas"]
        cmd = launcher["template"]["spec"]["containers"][0]["command"]
        assert cmd[0] == "horovodrun"
        np_ = int(cmd[cmd.index("-np") + 1])
        assert np_ == workers * slots, f"{overlay}: horovodrun -np {np_} but {workers} workers x {slots} slots"
        assert cmd[cmd.index("--hostfile") + 1] == "/etc/mpi/hostfile"
        # the launcher's key path and the worker's sshd agree with the operator's mount
        assert cmd[cmd.index("--ssh-identity-file") + 1].startswith(spec["sshAuthMountPath"])
        sshd = (ROOT / "docker/sshd_config").read_text()
        assert f"Port {cmd[cmd.index('--ssh-port') + 1]}" in sshd
        assert f"HostKey {spec['sshAuthMountPath']}/id_rsa" in sshd
        gpus = worker["template"]["spec"]["containers"][0]["resources"]["limits"].get("nvidia.com/gpu")
        if overlay == "gpu":
            assert gpus == slots, "one Horovod rank per GPU"
            assert "recsys-gpu" in worker["template"]["spec"]["containers"][0]["image"]
            assert "train.mixed_precision=float16" in cmd
        else:
            assert gpus is None


def test_sparkapplication_fields(rendered):
    pins = dict(line.split("==") for line in (ROOT / "requirements.txt").read_text().splitlines()
                if "==" in line and not line.startswith("#"))
    for overlay, docs in rendered.items():
        apps = _by_kind(docs, "SparkApplication")
        if overlay == "spark-submit":
            assert not apps and _one(docs, "Job", "recsys-prepare")
            continue
        (app,) = apps
        spec = app["spec"]
        assert app["apiVersion"] == "sparkoperator.k8s.io/v1beta2"
        assert spec["type"] == "Python" and spec["mode"] == "cluster"
        assert spec["sparkVersion"] == pins["pyspark"], "sparkVersion must match the pyspark pin"
        assert spec["mainApplicationFile"] == f"local://{IMAGE_CODE}/jobs/prepare.py"
        assert (ROOT / "jobs/prepare.py").is_file()
        assert spec["driver"]["serviceAccount"] == "recsys-spark"
        role = _one(docs, "Role", "recsys-spark")
        assert {"pods", "services", "configmaps"} <= set(role["rules"][0]["resources"])


def test_no_secrets_in_manifests(rendered):
    pattern = re.compile(r"(?<![a-z])(password|passwd|secret[_-]?key|access[_-]?key|token)\s*[:=]\s*\S", re.I)
    for overlay, docs in rendered.items():
        assert not _by_kind(docs, "Secret"), overlay
        for d in docs:
            if d["kind"] == "ConfigMap" and d["metadata"]["name"] == "recsys-conf":
                continue  # the project's own config files
            text = yaml.safe_dump(d)
            assert not pattern.search(text), f"{overlay}: {d['kind']}/{d['metadata']['name']} looks like it holds a secret"


def test_config_map_is_the_repository_conf(rendered):
    for docs in rendered.values():
        data = _one(docs, "ConfigMap", "recsys-conf")["data"]
        for name in ("default.yaml", "ml-100k.yaml", "synth-25m.yaml"):
            assert data[name] == (ROOT / "conf" / name).read_text()
        assert data["pipeline.yaml"] == (ROOT / "conf/ml-100k.yaml").read_text()


# ------------------------------------------------------------------ command lines


def _commands(docs: list[dict]) -> list[tuple[str, list[str]]]:
    """(where, argv) of every command a pod of this overlay runs."""
    out = []
    for d in docs:
        name = f"{d['kind']}/{d['metadata']['name']}"
        if d["kind"] == "SparkApplication":
            app = d["spec"]["mainApplicationFile"].removeprefix("local://")
            out.append((name, ["python", app, *d["spec"]["arguments"]]))
        for pod in _pods([d]):
            for c in pod["spec"]["containers"]:
                if c.get("command"):
                    out.append((f"{name} ({c['name']})", list(c["command"])))
    return out


def _local(argv: list[str], conf_dir: Path) -> list[str]:
    """A command from a manifest with image paths mapped onto this checkout."""
    mapped = []
    for a in argv:
        a = a.replace(IMAGE_CONF, str(conf_dir)).replace(IMAGE_CODE, str(ROOT))
        mapped.append(a)
    if mapped[0] in ("python", "recsys", "horovodrun", "spark-submit"):
        mapped[0] = str(VENV_BIN / mapped[0])
    return mapped


def _run(argv: list[str], where: str, cwd: Path) -> str:
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2")
    out = subprocess.run(argv, cwd=cwd, capture_output=True, text=True, timeout=180, env=env)
    assert out.returncode == 0, f"{where}: `{shlex.join(argv)}` failed ({out.returncode}):\n{out.stdout}\n{out.stderr}"
    return out.stdout


def _check_python_job(argv: list[str], where: str, cwd: Path) -> None:
    assert Path(argv[1]).is_file(), f"{where}: {argv[1]} does not exist"
    out = _run(argv + ["--dry-run"], where, cwd)
    assert "config" in out and "is valid" in out


def test_every_command_in_the_manifests_runs_against_the_real_cli(rendered, tmp_path):
    spark_help = None
    checked = set()
    for overlay, docs in rendered.items():
        conf_dir = tmp_path / overlay / "conf"
        conf_dir.mkdir(parents=True)
        for fname, text in _one(docs, "ConfigMap", "recsys-conf")["data"].items():
            (conf_dir / fname).write_text(text)
        for where, argv in _commands(docs):
            where = f"{overlay}: {where}"
            cmd = _local(argv, conf_dir)
            tool = argv[0]
            if tool == "python":
                _check_python_job(cmd, where, tmp_path)
            elif tool == "recsys":
                # click rejects unknown options before acting on --help
                _run(cmd + ["--help"], where, tmp_path)
            elif tool == "horovodrun":
                code = ("import sys, json; sys.argv = json.loads(sys.argv[1]); "
                        "from horovod.runner.launch import parse_args; a = parse_args(); "
                        "print(json.dumps({'np': a.num_proc, 'command': a.command}))")
                parsed = json.loads(_run([str(VENV_BIN / "python"), "-c", code, json.dumps(cmd)], where, tmp_path))
                assert parsed["np"] >= 1
                _check_python_job([str(VENV_BIN / "python")] + parsed["command"][1:], where, tmp_path)
            elif tool == "spark-submit":
                if spark_help is None:
                    out = subprocess.run([str(VENV_BIN / "spark-submit"), "--help"], capture_output=True,
                                         text=True, timeout=120)
                    spark_help = out.stdout + out.stderr
                app = next(i for i, a in enumerate(cmd) if a.endswith(".py"))
                for flag in (a for a in cmd[1:app] if a.startswith("--")):
                    assert re.search(rf"\s{re.escape(flag)}\b", spark_help), f"{where}: spark-submit has no {flag}"
                _check_python_job([str(VENV_BIN / "python")] + cmd[app:], where, tmp_path)
            elif tool == "/usr/sbin/sshd":
                conf = Path(cmd[cmd.index("-f") + 1])
                assert conf.is_file(), f"{where}: {conf} missing"
                assert "openssh-server" in (ROOT / "docker/Dockerfile.cpu").read_text()
            else:
                pytest.fail(f"{where}: no check for command {tool!r}; add one")
            checked.add(tool)
    assert {"python", "recsys", "horovodrun", "spark-submit", "/usr/sbin/sshd"} <= checked


def test_a_renamed_flag_is_caught(tmp_path):
    conf_dir = ROOT / "conf"
    with pytest.raises(AssertionError, match="failed"):
        _check_python_job(_local(["python", f"{IMAGE_CODE}/jobs/export.py", "--konfig", "x.yaml"], conf_dir),
                          "test", tmp_path)
    with pytest.raises(AssertionError, match="failed"):
        _check_python_job(_local(["python", f"{IMAGE_CODE}/train.py", "--config", f"{IMAGE_CONF}/ml-100k.yaml",
                                  "--set", "train.epoch=3"], conf_dir), "test", tmp_path)


def test_pipeline_script_plans_every_stage(rendered):
    for overlay in rendered:
        out = subprocess.run([str(K8S / "run-pipeline.sh"), "--overlay", overlay, "--dry-run"],
                             capture_output=True, text=True, timeout=120)
        assert out.returncode == 0, out.stderr
        for stage in STAGES:
            assert f"] {stage}: would apply" in out.stderr, (overlay, stage)
    bad = subprocess.run([str(K8S / "run-pipeline.sh"), "--overlay", "nope", "--dry-run"],
                         capture_output=True, text=True, timeout=60)
    assert bad.returncode == 1 and "no overlay k8s/overlays/nope" in bad.stderr
    bad = subprocess.run([str(K8S / "run-pipeline.sh"), "--from", "training", "--dry-run"],
                         capture_output=True, text=True, timeout=60)
    assert bad.returncode == 1 and "not a stage" in bad.stderr


@pytest.mark.parametrize("args,message", [
    (["--timeout-scale", "abc"], "--timeout-scale abc: give a positive number"),
    (["--timeout-scale", "0"], "--timeout-scale 0: give a positive number"),
    (["--timeout-scale", "-1"], "--timeout-scale -1: give a positive number"),
    (["--timeout-scale"], "--timeout-scale needs a value"),
    (["--overlay"], "--overlay needs a value (an overlay: cpu-small"),
    (["--overlay", "--dry-run"], "--overlay needs a value"),
    (["--from"], "--from needs a value (a stage: fetch prepare"),
])
def test_pipeline_script_checks_its_arguments(args, message):
    out = subprocess.run([str(K8S / "run-pipeline.sh"), *args, "--dry-run"], capture_output=True, text=True, timeout=60)
    assert out.returncode == 1
    lines = out.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith(f"[pipeline] ERROR: {message}"), out.stderr
    assert "Traceback" not in out.stderr


def test_pipeline_dry_run_prints_the_images(rendered):
    out = subprocess.run([str(K8S / "run-pipeline.sh"), "--overlay", "gpu", "--dry-run", "--timeout-scale", "0.5"],
                         capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    images = set(re.findall(r"^\s*-?\s*image:\s*(\S+)", yaml.safe_dump_all(rendered["gpu"]), re.M))
    assert images == {"ghcr.io/recsys/recsys-gpu:0.1.0"}
    assert "[pipeline] images: ghcr.io/recsys/recsys-gpu:0.1.0 (" in out.stderr and "placeholders" in out.stderr
    mpijob = _one(rendered["gpu"], "MPIJob", "recsys-train")
    half = int(mpijob["spec"]["runPolicy"]["activeDeadlineSeconds"] * 0.5)
    assert (f"] train: would apply MPIJob/recsys-train in namespace recsys and wait up to {half}s "
            "(image ghcr.io/recsys/recsys-gpu:0.1.0)") in out.stderr
    doc = (ROOT / "docs/kubernetes.md").read_text()
    assert "ghcr.io/recsys/recsys-cpu" in doc and "placeholder" in doc


FAKE_KUBECTL = """#!/usr/bin/env bash
# kubectl for a cluster whose pods cannot pull their image: kustomize is the real one
echo "$*" >> "$FAKE_LOG"
case "$1" in kustomize) exec "$REAL_KUBECTL" "$@" ;; esac
case " $* " in
  *" wait "*) sleep 0.2; exit 1 ;;
  *" get pods "*) cat <<'JSON'
{"items": [{"metadata": {"name": "recsys-export-x7k2p"}, "status": {"containerStatuses": [{"image": "ghcr.io/recsys/recsys-cpu:0.1.0",
 "state": {"waiting": {"reason": "ImagePullBackOff", "message": "Back-off pulling image \\"ghcr.io/recsys/recsys-cpu:0.1.0\\""}}}]}}]}
JSON
  ;;
esac
exit 0
"""


def test_a_pod_that_cannot_pull_its_image_fails_the_stage_at_once(rendered, tmp_path):
    fake = tmp_path / "bin" / "kubectl"
    fake.parent.mkdir()
    fake.write_text(FAKE_KUBECTL)
    fake.chmod(0o755)
    log = tmp_path / "calls.log"
    env = dict(os.environ, PATH=f"{fake.parent}:{os.environ['PATH']}", REAL_KUBECTL=KUBECTL, FAKE_LOG=str(log))
    out = subprocess.run([str(K8S / "run-pipeline.sh"), "--from", "export"], capture_output=True, text=True,
                         timeout=60, env=env)
    assert out.returncode == 1, out.stderr
    last = out.stderr.strip().splitlines()[-1]
    assert last.startswith("[pipeline] ERROR: stage export failed (Job/recsys-export): pod recsys-export-x7k2p cannot "
                           "pull image ghcr.io/recsys/recsys-cpu:0.1.0 (ImagePullBackOff: Back-off pulling image"), last
    assert "-l job-name=recsys-export" in log.read_text()
    assert "running (" not in out.stderr  # failed on the first look, not after the deadline
