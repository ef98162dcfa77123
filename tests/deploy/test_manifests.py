"""Offline checks of deploy/: Kubernetes manifests, KEDA objects, compose file, Dockerfiles.

Run through scripts/test-deploy.sh, which provides kubectl (for `kubectl kustomize`) and a venv
with kubernetes-validate, PyYAML and pytest. Nothing here needs Docker or a cluster.
"""

from __future__ import annotations

import functools
import os
import re
import shlex
import subprocess
import textwrap
import time
from pathlib import Path

import kubernetes_validate
import pytest
import yaml

REPO = Path(__file__).resolve().parents[2]
DEPLOY = REPO / "deploy"
K8S = DEPLOY / "k8s"
COMPOSE_FILE = DEPLOY / "compose" / "compose.yaml"
ENV_EXAMPLE = DEPLOY / "compose" / ".env.example"
README = DEPLOY / "README.md"
ADAPTER_SYNC = K8S / "components" / "vllm" / "adapter-sync.sh"
BATCH_JOB = K8S / "batch" / "indexed-job.yaml"

KUBECTL = os.environ.get("KUBECTL", "kubectl")
# A version kubernetes-validate ships schemas for; the Debian/Google kubectl here is 1.32 too.
K8S_VERSION = os.environ.get("LIFT_K8S_VERSION", "1.32.0")

KUSTOMIZATIONS = {"base": K8S / "base", "cpu": K8S / "overlays" / "cpu", "gpu": K8S / "overlays" / "gpu"}
OVERLAYS = ["cpu", "gpu"]
ALL_SETS = ["base", "cpu", "gpu", "batch"]

GPU = "nvidia.com/gpu"
KEDA_GROUP = "keda.sh/"

# Field names of the KEDA 2.x CRDs (keda.sh/v1alpha1), to catch typos the API server would
# reject (or, worse, silently drop) without having the CRDs here.
SCALED_OBJECT_SPEC = {
    "scaleTargetRef", "pollingInterval", "initialCooldownPeriod", "cooldownPeriod",
    "idleReplicaCount", "minReplicaCount", "maxReplicaCount", "fallback", "advanced", "triggers",
}
SCALED_JOB_SPEC = {
    "jobTargetRef", "pollingInterval", "successfulJobsHistoryLimit", "failedJobsHistoryLimit",
    "envSourceContainerName", "minReplicaCount", "maxReplicaCount", "rolloutStrategy", "rollout",
    "scalingStrategy", "triggers",
}
SCALED_JOB_STRATEGIES = {"default", "custom", "accurate", "eager"}
TRIGGER_FIELDS = {"type", "name", "metadata", "authenticationRef", "useCachedMetrics", "metricType"}
RABBITMQ_METADATA = {
    "host", "hostFromEnv", "protocol", "mode", "value", "activationValue", "queueName",
    "vhostName", "useRegex", "excludeUnacknowledged", "pageSize", "operation", "unsafeSsl",
    "timeout", "usernameFromEnv", "passwordFromEnv",
}
TRIGGER_AUTH_SPEC = {
    "secretTargetRef", "env", "hashiCorpVault", "azureKeyVault", "awsSecretManager",
    "gcpSecretManager", "podIdentity", "configMapTargetRef", "boundServiceAccountToken",
}
# The queue each scaled workload consumes (shared/src/broker/mod.rs, `queues`).
QUEUE_OF = {"synth-worker": "lift.synth", "train-worker": "lift.train"}


# ---------------------------------------------------------------------------------------------
# loading


@functools.lru_cache(maxsize=None)
def rendered(name: str) -> tuple[dict, ...]:
    """The objects of one kustomization (rendered offline) or of the batch file."""
    if name == "batch":
        text = BATCH_JOB.read_text()
    else:
        result = subprocess.run(
            [KUBECTL, "kustomize", str(KUSTOMIZATIONS[name])],
            capture_output=True, text=True, timeout=120,
        )
        assert result.returncode == 0, (
            f"`{KUBECTL} kustomize {KUSTOMIZATIONS[name]}` failed:\n{result.stderr}"
        )
        text = result.stdout
    return tuple(doc for doc in yaml.safe_load_all(text) if doc)


def find(objs, kind: str, name: str) -> dict:
    matches = [o for o in objs if o["kind"] == kind and o["metadata"]["name"] == name]
    assert len(matches) == 1, f"expected one {kind}/{name}, found {len(matches)}"
    return matches[0]


def by_kind(objs, kind: str) -> list[dict]:
    return [o for o in objs if o["kind"] == kind]


def is_keda(obj: dict) -> bool:
    return obj["apiVersion"].startswith(KEDA_GROUP)


def pod_templates(objs):
    """(label, pod template) for every object that makes pods."""
    for obj in objs:
        kind, name = obj["kind"], obj["metadata"]["name"]
        spec = obj.get("spec", {})
        if kind in ("Deployment", "StatefulSet", "DaemonSet", "ReplicaSet", "Job"):
            yield f"{kind}/{name}", spec["template"]
        elif kind == "CronJob":
            yield f"{kind}/{name}", spec["jobTemplate"]["spec"]["template"]
        elif kind == "ScaledJob":
            yield f"{kind}/{name}", spec["jobTargetRef"]["template"]


def pod_specs(objs):
    for label, template in pod_templates(objs):
        yield label, template["spec"]


def all_containers(pod_spec: dict):
    for key in ("initContainers", "containers"):
        for container in pod_spec.get(key) or []:
            yield key, container


def container_by_name(pod_spec: dict, name: str) -> dict:
    for _, container in all_containers(pod_spec):
        if container["name"] == name:
            return container
    raise AssertionError(f"no container {name}")


@functools.lru_cache(maxsize=None)
def lift_env_names() -> frozenset[str]:
    """Every LIFT_* variable the Rust sources name (config.rs, clap `env =`, engine, store)."""
    names = set()
    for root, dirs, files in os.walk(REPO):
        dirs[:] = [d for d in dirs if d not in ("target", ".git", ".cache", "node_modules", "deploy")]
        for file in files:
            if file.endswith(".rs"):
                text = (Path(root) / file).read_text(errors="replace")
                names.update(re.findall(r'"(LIFT_[A-Z0-9_]+)"', text))
    names = {n for n in names if not n.startswith("LIFT_TEST_")}
    assert "LIFT_AMQP_URL" in names and "LIFT_STORE_URL" in names, "found no LIFT_* names in the Rust sources"
    return frozenset(names)


# ---------------------------------------------------------------------------------------------
# rendering and schema validation


@pytest.mark.parametrize("name", ["base", "cpu", "gpu"])
def test_kustomization_renders(name):
    kinds = {o["kind"] for o in rendered(name)}
    assert {"Namespace", "ConfigMap", "Secret", "Deployment", "Service", "ScaledObject",
            "ScaledJob", "TriggerAuthentication", "PodDisruptionBudget"} <= kinds
    for obj in rendered(name):
        if obj["kind"] != "Namespace":
            assert obj["metadata"].get("namespace") == "lift", f"{obj['kind']}/{obj['metadata']['name']} is not in namespace lift"


@pytest.mark.parametrize("name", ALL_SETS)
def test_core_objects_validate_strictly(name):
    checked, errors = 0, []
    for obj in rendered(name):
        if is_keda(obj):
            continue
        label = f"{obj['kind']}/{obj['metadata']['name']}"
        try:
            kubernetes_validate.validate(obj, K8S_VERSION, strict=True)
            checked += 1
        except kubernetes_validate.ValidationError as error:
            errors.append(f"{label}: {'.'.join(map(str, error.path))}: {error.message}")
        except kubernetes_validate.SchemaNotFoundError as error:
            errors.append(f"{label}: {error.message}")
    assert not errors, "\n".join(errors)
    assert checked > 0


@pytest.mark.parametrize("name", ["base", "cpu", "gpu"])
def test_scaled_job_spec_is_a_valid_job_spec(name):
    # KEDA copies jobTargetRef into each Job it creates: it must be a valid batch/v1 JobSpec.
    for scaled_job in by_kind(rendered(name), "ScaledJob"):
        job = {
            "apiVersion": "batch/v1",
            "kind": "Job",
            "metadata": {"name": scaled_job["metadata"]["name"]},
            "spec": scaled_job["spec"]["jobTargetRef"],
        }
        try:
            kubernetes_validate.validate(job, K8S_VERSION, strict=True)
        except kubernetes_validate.ValidationError as error:
            pytest.fail(f"ScaledJob/{job['metadata']['name']} jobTargetRef: {'.'.join(map(str, error.path))}: {error.message}")


@pytest.mark.parametrize("name", ["base", "cpu", "gpu"])
def test_scaled_object_hpa_behavior_is_valid(name):
    # KEDA hands advanced.horizontalPodAutoscalerConfig.behavior to the HPA it creates.
    for scaled in by_kind(rendered(name), "ScaledObject"):
        behavior = scaled["spec"].get("advanced", {}).get("horizontalPodAutoscalerConfig", {}).get("behavior")
        if behavior is None:
            continue
        hpa = {
            "apiVersion": "autoscaling/v2",
            "kind": "HorizontalPodAutoscaler",
            "metadata": {"name": scaled["metadata"]["name"]},
            "spec": {
                "scaleTargetRef": {"apiVersion": "apps/v1", "kind": "Deployment", "name": scaled["spec"]["scaleTargetRef"]["name"]},
                "maxReplicas": scaled["spec"].get("maxReplicaCount", 100),
                "behavior": behavior,
            },
        }
        kubernetes_validate.validate(hpa, K8S_VERSION, strict=True)


# ---------------------------------------------------------------------------------------------
# KEDA


def check_rabbitmq_trigger(objs, owner: str, trigger: dict, queue: str):
    assert set(trigger) <= TRIGGER_FIELDS, f"{owner}: unknown trigger fields {set(trigger) - TRIGGER_FIELDS}"
    assert trigger["type"] == "rabbitmq", f"{owner}: trigger type {trigger['type']}"
    meta = trigger["metadata"]
    assert set(meta) <= RABBITMQ_METADATA, f"{owner}: unknown rabbitmq metadata {set(meta) - RABBITMQ_METADATA}"
    assert all(isinstance(v, str) for v in meta.values()), f"{owner}: trigger metadata values must be strings"
    # http: the management API counts ready + unacked messages; over AMQP only ready ones.
    assert meta.get("protocol") == "http", f"{owner}: protocol must be http"
    assert meta.get("mode") == "QueueLength", f"{owner}: mode must be QueueLength"
    assert meta.get("queueName") == queue, f"{owner}: queueName {meta.get('queueName')} != {queue}"
    assert int(meta["value"]) >= 1
    # The management URL comes from a TriggerAuthentication, or from the env of the target.
    if "authenticationRef" in trigger:
        auth = find(objs, "TriggerAuthentication", trigger["authenticationRef"]["name"])
        params = {ref["parameter"] for ref in auth["spec"].get("secretTargetRef", [])}
        assert "host" in params, f"{owner}: TriggerAuthentication gives no host"
    else:
        assert "hostFromEnv" in meta or "host" in meta, f"{owner}: no RabbitMQ host"


@pytest.mark.parametrize("name", ["base", "cpu", "gpu"])
def test_scaled_objects(name):
    objs = rendered(name)
    scaled_objects = by_kind(objs, "ScaledObject")
    assert {s["metadata"]["name"] for s in scaled_objects} == {"synth-worker"}
    for scaled in scaled_objects:
        owner = f"ScaledObject/{scaled['metadata']['name']}"
        spec = scaled["spec"]
        assert set(spec) <= SCALED_OBJECT_SPEC, f"{owner}: unknown fields {set(spec) - SCALED_OBJECT_SPEC}"
        target = spec["scaleTargetRef"]["name"]
        deployment = find(objs, spec["scaleTargetRef"].get("kind", "Deployment"), target)
        # The HPA owns the replica count; a fixed one would fight it on every apply.
        assert "replicas" not in deployment["spec"], f"{owner}: Deployment/{target} sets replicas"
        assert spec["triggers"], f"{owner}: no triggers"
        assert 0 <= spec.get("minReplicaCount", 0) <= spec.get("maxReplicaCount", 100)
        for trigger in spec["triggers"]:
            check_rabbitmq_trigger(objs, owner, trigger, QUEUE_OF[target])


@pytest.mark.parametrize("name", ["base", "cpu", "gpu"])
def test_scaled_jobs(name):
    objs = rendered(name)
    scaled_jobs = by_kind(objs, "ScaledJob")
    assert {s["metadata"]["name"] for s in scaled_jobs} == {"train-worker"}
    for scaled in scaled_jobs:
        name_ = scaled["metadata"]["name"]
        owner = f"ScaledJob/{name_}"
        spec = scaled["spec"]
        assert set(spec) <= SCALED_JOB_SPEC, f"{owner}: unknown fields {set(spec) - SCALED_JOB_SPEC}"
        template = spec["jobTargetRef"]["template"]
        pod = template["spec"]
        assert pod["containers"], f"{owner}: jobTargetRef.template has no containers"
        assert pod["restartPolicy"] in ("Never", "OnFailure")
        assert spec["triggers"], f"{owner}: no triggers"
        for trigger in spec["triggers"]:
            check_rabbitmq_trigger(objs, owner, trigger, QUEUE_OF[name_])
        assert spec.get("scalingStrategy", {}).get("strategy", "default") in SCALED_JOB_STRATEGIES
        # A rollout must not delete running Jobs (training runs) when the ScaledJob changes.
        assert spec.get("rollout", {}).get("strategy") == "gradual", f"{owner}: rollout.strategy must be gradual"
        main = container_by_name(pod, "train-worker")
        assert main["args"][0] == "train-worker"
        # The trainer checkpoints and hands its job back on SIGTERM: give it time.
        assert pod["terminationGracePeriodSeconds"] >= 600
        # Without an idle exit, a deadline is what bounds an idle Job's hold on its GPU.
        deadline = spec["jobTargetRef"].get("activeDeadlineSeconds")
        assert deadline and deadline > pod["terminationGracePeriodSeconds"]


@pytest.mark.parametrize("name", ["base", "cpu", "gpu"])
def test_trigger_authentications(name):
    objs = rendered(name)
    for auth in by_kind(objs, "TriggerAuthentication"):
        assert set(auth["spec"]) <= TRIGGER_AUTH_SPEC
        for ref in auth["spec"].get("secretTargetRef", []):
            secret = find(objs, "Secret", ref["name"])
            assert ref["key"] in secret_keys(secret), f"TriggerAuthentication needs {ref['name']}/{ref['key']}"
            if ref["parameter"] == "host":
                host = secret_keys(secret)[ref["key"]]
                # The management API, not AMQP; the trailing slash is required without a vhost.
                assert host.startswith("http") and ":15672/" in host, host


# ---------------------------------------------------------------------------------------------
# pods: security, resources, references


@pytest.mark.parametrize("name", ALL_SETS)
def test_every_container_is_locked_down(name):
    problems = []
    for label, pod in pod_specs(rendered(name)):
        pod_ctx = pod.get("securityContext", {})
        if pod_ctx.get("seccompProfile", {}).get("type") not in ("RuntimeDefault", "Localhost"):
            problems.append(f"{label}: pod has no RuntimeDefault seccomp profile")
        for key in ("hostNetwork", "hostPID", "hostIPC"):
            if pod.get(key):
                problems.append(f"{label}: {key}")
        for volume in pod.get("volumes", []):
            if "hostPath" in volume:
                problems.append(f"{label}: hostPath volume {volume['name']}")
        for _, container in all_containers(pod):
            where = f"{label} container {container['name']}"
            ctx = container.get("securityContext", {})
            non_root = ctx.get("runAsNonRoot", pod_ctx.get("runAsNonRoot"))
            uid = ctx.get("runAsUser", pod_ctx.get("runAsUser"))
            if non_root is not True:
                problems.append(f"{where}: runAsNonRoot is not true")
            if uid == 0:
                problems.append(f"{where}: runs as uid 0")
            if ctx.get("readOnlyRootFilesystem") is not True:
                problems.append(f"{where}: readOnlyRootFilesystem is not true")
            if ctx.get("allowPrivilegeEscalation") is not False:
                problems.append(f"{where}: allowPrivilegeEscalation is not false")
            if ctx.get("privileged"):
                problems.append(f"{where}: privileged")
            if ctx.get("capabilities", {}).get("drop") != ["ALL"]:
                problems.append(f"{where}: capabilities are not dropped (drop: [ALL])")
            if ctx.get("capabilities", {}).get("add"):
                problems.append(f"{where}: adds capabilities")
            # A read-only root needs somewhere to write temporary files.
            mounts = {m["mountPath"]: m for m in container.get("volumeMounts", [])}
            if "/tmp" not in mounts or mounts["/tmp"].get("readOnly"):
                problems.append(f"{where}: no writable /tmp volume")
    assert not problems, "\n".join(problems)


@pytest.mark.parametrize("name", ALL_SETS)
def test_every_container_has_resources(name):
    problems = []
    for label, pod in pod_specs(rendered(name)):
        for _, container in all_containers(pod):
            resources = container.get("resources", {})
            requests, limits = resources.get("requests", {}), resources.get("limits", {})
            if not {"cpu", "memory"} <= set(requests):
                problems.append(f"{label} {container['name']}: requests cpu and memory")
            if "memory" not in limits:
                problems.append(f"{label} {container['name']}: no memory limit")
            # Extended resources (GPUs) must be requested and limited alike.
            if requests.get(GPU) != limits.get(GPU):
                problems.append(f"{label} {container['name']}: GPU requests and limits differ")
    assert not problems, "\n".join(problems)


def secret_keys(secret: dict) -> dict:
    import base64

    keys = dict(secret.get("stringData") or {})
    for key, value in (secret.get("data") or {}).items():
        keys[key] = base64.b64decode(value).decode()
    return keys


def config_keys(objs, kind: str, name: str) -> dict | None:
    matches = [o for o in objs if o["kind"] == kind and o["metadata"]["name"] == name]
    if not matches:
        return None
    return secret_keys(matches[0]) if kind == "Secret" else dict(matches[0].get("data") or {})


@pytest.mark.parametrize("name", ["base", "cpu", "gpu", "batch"])
def test_references_resolve(name):
    objs = rendered(name)
    # The batch Job runs next to an overlay: it may use the stack's ConfigMap and Secrets.
    universe = list(objs) + (list(rendered("gpu")) if name == "batch" else [])
    problems = []

    def need(kind, ref_name, key=None, optional=False, where=""):
        keys = config_keys(universe, kind, ref_name)
        if keys is None:
            if not optional:
                problems.append(f"{where}: {kind} {ref_name} does not exist")
        elif key is not None and key not in keys and not optional:
            problems.append(f"{where}: {kind} {ref_name} has no key {key}")

    for label, pod in pod_specs(objs):
        volumes = {v["name"]: v for v in pod.get("volumes", [])}
        for volume in volumes.values():
            if "configMap" in volume:
                need("ConfigMap", volume["configMap"]["name"], optional=volume["configMap"].get("optional", False), where=label)
            if "secret" in volume:
                need("Secret", volume["secret"]["secretName"], optional=volume["secret"].get("optional", False), where=label)
        for _, container in all_containers(pod):
            where = f"{label} {container['name']}"
            for source in container.get("envFrom", []):
                if "configMapRef" in source:
                    need("ConfigMap", source["configMapRef"]["name"], optional=source["configMapRef"].get("optional", False), where=where)
                if "secretRef" in source:
                    need("Secret", source["secretRef"]["name"], optional=source["secretRef"].get("optional", False), where=where)
            for env in container.get("env", []):
                ref = env.get("valueFrom", {})
                if "configMapKeyRef" in ref:
                    r = ref["configMapKeyRef"]
                    need("ConfigMap", r["name"], r["key"], r.get("optional", False), where)
                if "secretKeyRef" in ref:
                    r = ref["secretKeyRef"]
                    need("Secret", r["name"], r["key"], r.get("optional", False), where)
            for mount in container.get("volumeMounts", []):
                if mount["name"] not in volumes:
                    problems.append(f"{where}: mounts undeclared volume {mount['name']}")
    assert not problems, "\n".join(problems)


@pytest.mark.parametrize("name", ["base", "cpu", "gpu"])
def test_services_and_budgets_select_pods(name):
    objs = rendered(name)
    templates = [(label, t.get("metadata", {}).get("labels", {})) for label, t in pod_templates(objs)]

    def selected(selector: dict) -> list[str]:
        return [label for label, labels in templates if selector and all(labels.get(k) == v for k, v in selector.items())]

    for service in by_kind(objs, "Service"):
        pods = selected(service["spec"]["selector"])
        assert pods, f"Service/{service['metadata']['name']} selects no pods"
        for port in service["spec"]["ports"]:
            target = port.get("targetPort", port["port"])
            for label, pod in pod_specs(objs):
                if label not in pods:
                    continue
                declared = {p.get("name") for c in pod["containers"] for p in c.get("ports", [])}
                declared |= {p["containerPort"] for c in pod["containers"] for p in c.get("ports", [])}
                assert target in declared, f"Service/{service['metadata']['name']} targets undeclared port {target} of {label}"
    for budget in by_kind(objs, "PodDisruptionBudget"):
        pods = selected(budget["spec"]["selector"]["matchLabels"])
        assert pods, f"PodDisruptionBudget/{budget['metadata']['name']} selects no pods"
        # A budget that allows no eviction blocks node drains for good.
        assert budget["spec"].get("maxUnavailable", 1) != 0
    for label, template in pod_templates(objs):
        obj_selector = None
        for obj in objs:
            if f"{obj['kind']}/{obj['metadata']['name']}" == label and obj["kind"] == "Deployment":
                obj_selector = obj["spec"]["selector"]["matchLabels"]
        if obj_selector:
            labels = template["metadata"]["labels"]
            assert all(labels.get(k) == v for k, v in obj_selector.items()), f"{label}: selector does not match its pods"


@pytest.mark.parametrize("name", ["base", "cpu", "gpu"])
def test_probes_use_declared_ports(name):
    for label, pod in pod_specs(rendered(name)):
        for container in pod["containers"]:
            ports = {p.get("name") for p in container.get("ports", [])} | {p["containerPort"] for p in container.get("ports", [])}
            for probe_name in ("startupProbe", "readinessProbe", "livenessProbe"):
                probe = container.get(probe_name)
                if not probe:
                    continue
                handler = probe.get("grpc") or probe.get("httpGet") or probe.get("tcpSocket")
                assert handler, f"{label} {container['name']} {probe_name}: no grpc/httpGet/tcpSocket"
                assert handler["port"] in ports, f"{label} {container['name']} {probe_name}: port {handler['port']} not declared"


@pytest.mark.parametrize("name", ["base", "cpu", "gpu"])
def test_coordinator(name):
    objs = rendered(name)
    deployment = find(objs, "Deployment", "coordinator")
    # One coordinator: it keeps live job state in memory and consumes lift.events.
    assert deployment["spec"]["replicas"] == 1
    assert deployment["spec"]["strategy"]["type"] == "Recreate"
    container = container_by_name(deployment["spec"]["template"]["spec"], "coordinator")
    assert container["args"][0] == "coordinator"
    for probe in ("livenessProbe", "readinessProbe"):
        assert container[probe]["grpc"]["port"] == 50051
    env = {e["name"]: e.get("value") for e in container.get("env", [])}
    assert env["LIFT_GRPC_ADDR"] == "0.0.0.0:50051"
    service = find(objs, "Service", "coordinator")
    assert {p["name"]: p["port"] for p in service["spec"]["ports"]} == {"grpc": 50051, "metrics": 9090}


@pytest.mark.parametrize("name", ["base", "cpu", "gpu"])
def test_config_names_only_variables_lift_reads(name):
    objs = rendered(name)
    known = lift_env_names()
    config = config_keys(objs, "ConfigMap", "lift-config")
    secrets = config_keys(objs, "Secret", "lift-secrets")
    assert "LIFT_AMQP_URL" in secrets and secrets["LIFT_AMQP_URL"].startswith("amqp://")
    assert config["LIFT_STORE_URL"].startswith("s3://")
    names = set(config) | set(secrets)
    for _, pod in pod_specs(objs):
        for _, container in all_containers(pod):
            names |= {e["name"] for e in container.get("env", [])}
    unknown = {n for n in names if n.startswith("LIFT_") and n not in known}
    assert not unknown, f"LIFT_* variables no lift code reads (typos?): {sorted(unknown)}"
    # Everything else the processes get must be a variable some library reads.
    others = {n for n in set(config) | set(secrets) if not n.startswith("LIFT_")}
    assert others <= {"AWS_REGION", "AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_ENDPOINT_URL",
                      "AWS_ALLOW_HTTP", "RUST_LOG", "HOME", "HF_TOKEN"}, others


@pytest.mark.parametrize("name", ["cpu", "gpu"])
def test_overlay_images_are_resolved_and_pinned(name):
    for label, pod in pod_specs(rendered(name)):
        for _, container in all_containers(pod):
            image = container["image"]
            assert "/" in image and ":" in image.rsplit("/", 1)[-1], f"{label} {container['name']}: image {image} is not a pinned registry image"
            assert not image.endswith(":latest"), f"{label} {container['name']}: {image}"


@pytest.mark.parametrize("name", ["base", "cpu", "gpu"])
def test_model_cache_is_filled_before_lift_loads_a_model(name):
    objs = rendered(name)
    model_dir = config_keys(objs, "ConfigMap", "lift-config")["LIFT_MODEL_DIR"]
    generator = config_keys(objs, "ConfigMap", "lift-config")["LIFT_GENERATOR_URL"]
    needs_model = {"ScaledJob/train-worker": "train-worker"}
    if not generator:
        needs_model["Deployment/synth-worker"] = "synth-worker"
    specs = dict(pod_specs(objs))
    for label, main_name in needs_model.items():
        pod = specs[label]
        init = [c for c in pod.get("initContainers") or [] if c.get("args") == ["model", "fetch"]]
        assert init, f"{label}: no `lift model fetch` init container"
        init_mount = {m["mountPath"]: m["name"] for m in init[0]["volumeMounts"]}
        main_mount = {m["mountPath"]: m["name"] for m in container_by_name(pod, main_name)["volumeMounts"]}
        assert init_mount.get(model_dir) and init_mount.get(model_dir) == main_mount.get(model_dir), (
            f"{label}: the model cache {model_dir} is not shared by init and main container"
        )
        volume = next(v for v in pod["volumes"] if v["name"] == init_mount[model_dir])
        assert "emptyDir" in volume or "persistentVolumeClaim" in volume


def test_cpu_overlay_uses_no_gpu_and_no_vllm():
    objs = rendered("cpu")
    assert not [o for o in objs if o["metadata"]["name"] == "vllm"]
    for label, pod in pod_specs(objs):
        for _, container in all_containers(pod):
            assert GPU not in container.get("resources", {}).get("limits", {}), f"{label} asks for a GPU"
    assert config_keys(objs, "ConfigMap", "lift-config")["LIFT_GENERATOR_URL"] == ""


def test_gpu_overlay_puts_trainers_and_vllm_on_gpus():
    objs = rendered("gpu")
    specs = dict(pod_specs(objs))
    for label, main in (("ScaledJob/train-worker", "train-worker"), ("Deployment/vllm", "vllm")):
        pod = specs[label]
        container = container_by_name(pod, main)
        assert container["resources"]["limits"][GPU] == 1, f"{label}: needs nvidia.com/gpu: 1"
        tolerations = pod.get("tolerations", [])
        assert any(t["key"] == GPU and t.get("operator") == "Exists" and t.get("effect") == "NoSchedule" for t in tolerations), (
            f"{label}: does not tolerate the {GPU} taint"
        )
    trainer = container_by_name(specs["ScaledJob/train-worker"], "train-worker")
    assert trainer["image"].endswith("-cuda"), trainer["image"]
    # Nothing else holds a GPU.
    for label, pod in specs.items():
        for _, container in all_containers(pod):
            if label not in ("ScaledJob/train-worker", "Deployment/vllm"):
                assert GPU not in container.get("resources", {}).get("limits", {}), f"{label} asks for a GPU"


def test_gpu_overlay_vllm_serves_what_synth_workers_and_adapters_expect():
    objs = rendered("gpu")
    config = config_keys(objs, "ConfigMap", "lift-config")
    vllm = find(objs, "Deployment", "vllm")
    pod = vllm["spec"]["template"]["spec"]
    container = container_by_name(pod, "vllm")
    args = container["args"]
    served = args[0]
    # Adapters carry base_model_name_or_path; vLLM loads them only onto the same model id.
    assert served == config["LIFT_GENERATOR_MODEL"] == "HuggingFaceTB/SmolLM2-135M-Instruct"
    assert "--enable-lora" in args
    rank = [a for a in args if a.startswith("--max-lora-rank")]
    assert rank and int(rank[0].split("=")[1]) >= 128
    env = {e["name"]: e.get("value") for e in container["env"]}
    assert env["VLLM_ALLOW_RUNTIME_LORA_UPDATING"] == "True"
    assert env["VLLM_LORA_RESOLVER_CACHE_DIR"] == "/adapters"
    service = find(objs, "Service", "vllm")
    port = service["spec"]["ports"][0]["port"]
    assert config["LIFT_GENERATOR_URL"] == f"http://vllm:{port}/v1"
    sidecar = container_by_name(pod, "adapter-sync")
    shared = {m["name"] for m in sidecar["volumeMounts"] if m["mountPath"] == "/adapters"}
    assert shared == {m["name"] for m in container["volumeMounts"] if m["mountPath"] == "/adapters"}
    # The sidecar's script is the file in the component, not a stale copy.
    script_cm = next(v["configMap"]["name"] for v in pod["volumes"] if v["name"] == "adapter-sync")
    assert config_keys(objs, "ConfigMap", script_cm)["adapter-sync.sh"] == ADAPTER_SYNC.read_text()


def test_synth_workers_skip_the_model_with_vllm():
    pod = dict(pod_specs(rendered("gpu")))["Deployment/synth-worker"]
    assert not pod.get("initContainers")
    assert "models" not in {v["name"] for v in pod["volumes"]}


# ---------------------------------------------------------------------------------------------
# corpus batches


def test_indexed_job():
    objs = rendered("batch")
    job = find(objs, "Job", "lift-corpus")
    spec = job["spec"]
    assert spec["completionMode"] == "Indexed"
    assert spec["backoffLimitPerIndex"] >= 1
    assert "maxFailedIndexes" in spec
    pod = spec["template"]["spec"]
    assert pod["restartPolicy"] == "Never"  # required by backoffLimitPerIndex
    corpus = find(objs, "ConfigMap", "lift-corpus")
    documents = [line for line in corpus["data"]["documents.txt"].splitlines() if line.strip()]
    assert spec["completions"] == len(documents), "completions must equal the number of documents listed"
    assert spec["parallelism"] <= spec["completions"]
    submit = container_by_name(pod, "submit")
    command = " ".join(submit.get("command", []) + submit.get("args", []))
    assert "lift submit" in command and "--watch" in command and "--addr coordinator:50051" in command
    fetch = container_by_name(pod, "fetch-document")
    assert "JOB_COMPLETION_INDEX" in " ".join(fetch["command"])


def test_indexed_job_picks_the_document_of_its_index(tmp_path):
    # Run the init container's own script with a stand-in `aws` that records what it copies.
    pod = find(rendered("batch"), "Job", "lift-corpus")["spec"]["template"]["spec"]
    fetch = container_by_name(pod, "fetch-document")
    script = fetch["command"][-1]
    corpus = find(rendered("batch"), "ConfigMap", "lift-corpus")["data"]
    documents = [line for line in corpus["documents.txt"].splitlines() if line.strip()]
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    log = tmp_path / "aws.log"
    (bin_dir / "aws").write_text(f'#!/bin/sh\necho "$@" >> {shlex.quote(str(log))}\n')
    (bin_dir / "aws").chmod(0o755)
    (tmp_path / "corpus").mkdir()
    (tmp_path / "corpus" / "documents.txt").write_text(corpus["documents.txt"])
    script = script.replace("/corpus/", f"{tmp_path}/corpus/").replace("/work/input/", f"{tmp_path}/input/")
    env = {"PATH": f"{bin_dir}:{os.environ['PATH']}", "CORPUS_S3_URI": corpus["CORPUS_S3_URI"]}
    for index, key in enumerate(documents):
        result = subprocess.run(["sh", "-c", script], env={**env, "JOB_COMPLETION_INDEX": str(index)},
                                capture_output=True, text=True, timeout=30)
        assert result.returncode == 0, result.stderr
        copied = log.read_text().splitlines()[-1]
        assert f"{corpus['CORPUS_S3_URI']}/{key} {tmp_path}/input/{key.rsplit('/', 1)[-1]}" in copied
    result = subprocess.run(["sh", "-c", script], env={**env, "JOB_COMPLETION_INDEX": str(len(documents))},
                            capture_output=True, text=True, timeout=30)
    assert result.returncode != 0 and "no document" in result.stderr


# ---------------------------------------------------------------------------------------------
# adapter-sync.sh


def test_adapter_sync_script_syntax():
    subprocess.run(["sh", "-n", str(ADAPTER_SYNC)], check=True)


FAKE_AWS = textwrap.dedent(
    """\
    #!/bin/sh
    # Stand-in for the aws CLI over a directory: s3://BUCKET/KEY is $FAKE_S3/BUCKET/KEY.
    set -eu
    [ "$1" = s3 ] || exit 2
    shift
    op="$1"; shift
    only_errors=0; recursive=0
    while [ "${1#--}" != "$1" ]; do
        case "$1" in --recursive) recursive=1 ;; --only-show-errors) only_errors=1 ;; esac
        shift
    done
    local_path() { echo "$FAKE_S3/${1#s3://}"; }
    case "$op" in
    ls)
        p="$(local_path "$1")"
        case "$1" in
        */) [ -d "$p" ] || exit 1
            found=0
            for entry in "$p"*; do
                [ -e "$entry" ] || continue
                found=1
                if [ -d "$entry" ]; then echo "                           PRE ${entry##*/}/"; else echo "2026-01-01 00:00:00 1 ${entry##*/}"; fi
            done
            [ "$found" = 1 ] ;;
        *) [ -f "$p" ] && echo "2026-01-01 00:00:00 1 ${p##*/}" ;;
        esac ;;
    cp)
        [ "$recursive" = 1 ] || exit 2
        src="$(local_path "$1")"; dst="$2"
        [ -d "$src" ] || exit 1
        mkdir -p "$dst"
        cp -R "$src". "$dst" ;;
    *) exit 2 ;;
    esac
    """
)


def test_adapter_sync_copies_only_finished_adapters(tmp_path):
    s3 = tmp_path / "s3"
    jobs = s3 / "bucket" / "prefix" / "jobs"
    done = jobs / "job-done" / "adapter"
    done.mkdir(parents=True)
    (done / "adapter_model.safetensors").write_bytes(b"weights")
    (done / "adapter_config.json").write_text('{"peft_type": "LORA"}')
    # Weights written, config not yet: the trainer is still exporting this one.
    half = jobs / "job-exporting" / "adapter"
    half.mkdir(parents=True)
    (half / "adapter_model.safetensors").write_bytes(b"partial")
    # Still training: no adapter at all.
    (jobs / "job-training" / "tasks").mkdir(parents=True)
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    (bin_dir / "aws").write_text(FAKE_AWS)
    (bin_dir / "aws").chmod(0o755)
    adapters = tmp_path / "adapters"
    env = {
        "PATH": f"{bin_dir}:{os.environ['PATH']}",
        "FAKE_S3": str(s3),
        "LIFT_STORE_URL": "s3://bucket/prefix",
        "ADAPTER_DIR": str(adapters),
        "SYNC_INTERVAL_SECONDS": "1",
    }
    process = subprocess.Popen(["sh", str(ADAPTER_SYNC)], env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        deadline = time.monotonic() + 20
        while not (adapters / "job-done" / "adapter_config.json").exists():
            assert process.poll() is None, process.stdout.read()
            assert time.monotonic() < deadline, "adapter-sync copied nothing in 20 s"
            time.sleep(0.2)
        # The exporting job finishes; the next round picks it up.
        (half / "adapter_config.json").write_text('{"peft_type": "LORA"}')
        while not (adapters / "job-exporting" / "adapter_config.json").exists():
            assert process.poll() is None, process.stdout.read()
            assert time.monotonic() < deadline, "adapter-sync did not pick up a newly finished adapter"
            time.sleep(0.2)
    finally:
        process.terminate()
        output = process.communicate(timeout=10)[0]
    assert (adapters / "job-done" / "adapter_model.safetensors").read_bytes() == b"weights"
    assert (adapters / "job-exporting" / "adapter_model.safetensors").read_bytes() == b"partial"
    assert sorted(p.name for p in adapters.iterdir()) == ["job-done", "job-exporting"], output


def test_adapter_sync_refuses_a_non_s3_store(tmp_path):
    result = subprocess.run(["sh", str(ADAPTER_SYNC)], env={"PATH": os.environ["PATH"], "LIFT_STORE_URL": str(tmp_path)},
                            capture_output=True, text=True, timeout=10)
    assert result.returncode == 2 and "s3://" in result.stderr


# ---------------------------------------------------------------------------------------------
# compose


@functools.lru_cache(maxsize=None)
def compose() -> dict:
    return yaml.safe_load(COMPOSE_FILE.read_text())


def readme_compose_services() -> set[str]:
    text = README.read_text()
    section = text.split("## One machine: Docker Compose", 1)[1].split("\n## ", 1)[0]
    return set(re.findall(r"^\| `([a-z0-9-]+)` \|", section, flags=re.M))


def test_compose_has_exactly_the_services_the_readme_names():
    documented = readme_compose_services()
    services = set(compose()["services"])
    assert documented, "deploy/README.md lists no compose services"
    assert documented - services == set(), f"README names services compose lacks: {documented - services}"
    assert services - documented == set(), f"compose services the README does not describe: {services - documented}"


def test_compose_references_exist():
    spec = compose()
    services = spec["services"]
    volumes = set(spec.get("volumes") or {})
    for name, service in services.items():
        assert "image" in service or "build" in service, name
        depends = service.get("depends_on", {})
        for dependency, condition in (depends.items() if isinstance(depends, dict) else ((d, {}) for d in depends)):
            assert dependency in services, f"{name} depends on unknown service {dependency}"
            assert condition.get("condition", "service_started") in ("service_started", "service_healthy", "service_completed_successfully")
            if condition.get("condition") == "service_healthy":
                assert "healthcheck" in services[dependency], f"{name} waits for {dependency} to be healthy, which has no healthcheck"
        for mount in service.get("volumes", []):
            source = mount.split(":", 1)[0]
            if source.startswith((".", "/")):
                assert (COMPOSE_FILE.parent / source).exists(), f"{name} mounts missing {source}"
            else:
                assert source in volumes, f"{name} mounts undeclared volume {source}"
        if "build" in service:
            context = COMPOSE_FILE.parent / service["build"]["context"]
            assert (context / "Cargo.toml").is_file(), f"{name}: build context is not the repository root"
            assert (context / service["build"]["dockerfile"]).is_file()


def test_compose_cluster_shape():
    services = compose()["services"]
    rabbit = services["rabbitmq"]
    assert rabbit["image"].startswith("rabbitmq:3") and rabbit["image"].endswith("-management")
    assert "healthcheck" in rabbit
    assert services["synth-worker"]["deploy"]["replicas"] == 2
    assert services["synth-worker"]["environment"]["LIFT_GENERATOR_URL"].endswith("http://vllm:8000/v1}")
    devices = services["train-worker"]["deploy"]["resources"]["reservations"]["devices"]
    assert devices[0]["capabilities"] == ["gpu"]
    vllm = services["vllm"]
    assert vllm["image"].startswith("vllm/vllm-openai:")
    assert "--enable-lora" in vllm["command"]
    assert any(a.startswith("--max-lora-rank") for a in vllm["command"])
    assert vllm["environment"]["VLLM_ALLOW_RUNTIME_LORA_UPDATING"] == "True"
    for name in ("coordinator", "synth-worker", "train-worker"):
        command = services[name]["command"]
        assert command[0] == name, f"{name} runs `lift {command[0]}`"
        env = services[name]["environment"]
        assert env["LIFT_AMQP_URL"].startswith("amqp://") and "@rabbitmq:5672/" in env["LIFT_AMQP_URL"]
        assert env["LIFT_STORE_URL"].startswith("s3://")
    # Plain http to a non-loopback S3 endpoint needs AWS_ALLOW_HTTP (see shared/src/store.rs).
    assert services["coordinator"]["environment"]["AWS_ALLOW_HTTP"] == "true"
    assert services["coordinator"]["environment"]["LIFT_GRPC_ADDR"] == "0.0.0.0:50051"


def test_compose_passes_only_variables_lift_reads():
    known = lift_env_names()
    for name, service in compose()["services"].items():
        env = service.get("environment") or {}
        unknown = {k for k in env if k.startswith("LIFT_") and k not in known}
        assert not unknown, f"{name}: LIFT_* variables no lift code reads: {sorted(unknown)}"


def test_env_example_variables_are_all_used():
    text = COMPOSE_FILE.read_text()
    used = set(re.findall(r"\$\{([A-Z0-9_]+)", text))
    listed = set()
    for line in ENV_EXAMPLE.read_text().splitlines():
        line = line.strip()
        if line and not line.startswith("#"):
            listed.add(line.split("=", 1)[0])
    assert listed, ".env.example lists nothing"
    assert listed - used == set(), f".env.example variables compose.yaml never reads: {listed - used}"
    assert used - listed == set(), f"compose.yaml variables .env.example does not document: {used - listed}"


# ---------------------------------------------------------------------------------------------
# Dockerfiles


def dockerfile_stages(text):
    """The stages of a Dockerfile in order, as (base, name, body); body is the text after FROM."""
    parts = re.split(r"^FROM ", text, flags=re.M)[1:]
    stages = []
    for part in parts:
        head, _, body = part.partition("\n")
        words = head.split()
        name = words[2] if len(words) >= 3 and words[1].upper() == "AS" else None
        stages.append((words[0], name, body))
    return stages


def stage_chain(stages, index):
    """The text of a stage and of the stages it is built on (a base that names an earlier stage),
    base first, and the image the chain starts from."""
    base, _, body = stages[index]
    names = {name: i for i, (_, name, _) in enumerate(stages[:index]) if name}
    if base in names:
        image, text = stage_chain(stages, names[base])
        return image, text + body
    return base, body


@pytest.mark.parametrize(
    "file, builder, runtime, feature",
    [
        ("Dockerfile.cpu", "rust:1.95-bookworm", "${RUNTIME_BASE}", None),
        ("Dockerfile.cuda", "nvidia/cuda:${CUDA_VERSION}-devel-ubuntu24.04", "nvidia/cuda:${CUDA_VERSION}-runtime-ubuntu24.04", "--features cuda"),
    ],
)
def test_dockerfile(file, builder, runtime, feature):
    text = (DEPLOY / "docker" / file).read_text()
    stages = dockerfile_stages(text)
    assert stages[0][:2] == (builder, "builder"), stages[0][:2]
    assert "cargo build --release --locked -p lift-cli" in stages[0][2]
    if feature:
        assert feature in text and "CUDA_COMPUTE_CAP=90" in text
        assert re.search(r"^ARG CUDA_VERSION=13\.0\.\d+$", text, flags=re.M)
    if runtime == "${RUNTIME_BASE}":
        # The default base, overridable for builds where no registry is reachable.
        assert re.search(r"^ARG RUNTIME_BASE=debian:bookworm-slim$", text, flags=re.M)
    # The default target is the last stage: the runtime with the builder's binary.
    image, runtime_stage = stage_chain(stages, len(stages) - 1)
    assert image == runtime, image
    assert "COPY --from=builder /usr/local/bin/lift /usr/local/bin/lift" in runtime_stage
    assert "python3" in runtime_stage and "ca-certificates" in runtime_stage
    assert re.search(r"useradd .*--uid 10001", runtime_stage.replace("\\\n", " "))
    assert re.search(r"^USER 10001(:10001)?$", runtime_stage, flags=re.M)
    assert re.search(r"^ENTRYPOINT \[\"lift\"\]$", runtime_stage, flags=re.M)
    assert "LIFT_MODEL_DIR=/models" in runtime_stage
    # Any other image the file can build is also the runtime, run as the same non-root user.
    for index, (_, name, _) in enumerate(stages[1:-1], start=1):
        image, chain = stage_chain(stages, index)
        assert image == runtime, (name, image)
        if name != "runtime":
            assert re.search(r"^USER 10001(:10001)?$", chain, flags=re.M), name
    # Every workspace member is copied (cargo reads all their manifests), itself or with the
    # folder it sits in (`shared/broker` comes with `shared`).
    members = re.search(r"members = \[([^\]]*)\]", (REPO / "Cargo.toml").read_text()).group(1)
    copied = set(re.findall(r"^COPY (\S+) \1$", text, flags=re.M))
    for member in re.findall(r'"([^"]+)"', members):
        parts = member.split("/")
        folders = {"/".join(parts[:end]) for end in range(1, len(parts) + 1)}
        assert folders & copied, f"{file} does not copy {member}"
