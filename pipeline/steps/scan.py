"""scan: Trivy on the built image and on the source tree, gated by severity.

Trivy runs with every severity and the gate is applied here, so reports can
still show findings below the threshold as non-blocking.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from ..backends.base import Backend, StepOutputCallback
from ..config import SEVERITIES, ScanSettings
from ..errors import ConfigError, UsageError
from ..results import Finding, Status, StepResult
from ..spec import (
    CacheMount,
    CommandResult,
    ExecResult,
    FileMount,
    ImageInput,
    StepSpec,
)
from ._context import (
    PIP_CACHE,
    REPORTS_PATH,
    SOURCE_PATH,
    TOOLS_CACHE,
    Context,
    log_name,
    plural,
    save_log,
    tail,
    tool_venv,
)

NAME = "scan"
NEEDS: tuple[str, ...] = ("build",)
TRIVY_CACHE_PATH = "/root/.cache/trivy"
# Trivy runs in this folder, not in the source tree, because it reads
# trivy.yaml from its working folder: a project's own trivy.yaml would
# otherwise change options that the pipeline sets.
SCAN_WORKDIR = "/work"
IMAGE_TARBALL = "/work/image.tar"
IGNOREFILE = "/work/trivyignore"
IMAGE_REPORT = f"{REPORTS_PATH}/trivy-image.json"
SOURCE_REPORT = f"{REPORTS_PATH}/trivy-source.json"
# The CycloneDX SBOM of the image, written for runs that publish it.
SBOM_REPORT = f"{REPORTS_PATH}/sbom.cdx.json"
SBOM_FILE = Path(SBOM_REPORT).name
FILES = (log_name(NAME), Path(IMAGE_REPORT).name, Path(SOURCE_REPORT).name, SBOM_FILE)
# Trivy logs "<time>\tFATAL\tFatal error\t<message>" or
# "<time>\tERROR\t<message>" (Trivy 0.76).
TRIVY_ERROR_LINE = re.compile(
    r"^\S+\t(?:FATAL|ERROR)\t(?:Fatal error\t)?(?P<message>.+)$", re.MULTILINE
)
# A flag error that Trivy's command-line parser prints before logging starts.
TRIVY_USAGE_ERROR = re.compile(r"^Error: (?P<message>.+)$", re.MULTILINE)


def _is_loopback(repository: str | None) -> bool:
    if not repository:
        return False
    host = urlsplit("//" + repository).hostname or ""
    return host in ("127.0.0.1", "localhost", "::1")


def trivy_cache(settings: ScanSettings) -> CacheMount:
    """Trivy's cache, one per database repository, so that a database from
    one repository never replaces another that cannot be reached."""
    key = hashlib.sha256(settings.db_repository.encode()).hexdigest()[:12]
    return CacheMount(f"trivy-{key}", TRIVY_CACHE_PATH)


def _common_flags(settings: ScanSettings, ignorefile: bool) -> list[str]:
    flags = [
        "--cache-dir", TRIVY_CACHE_PATH,
        "--skip-version-check",
        "--disable-telemetry",
        "--skip-java-db-update",
        "--no-progress",
        "--quiet",
        "--timeout", settings.timeout,
        "--format", "json",
    ]
    if settings.checks_bundle_repository:
        flags += ["--checks-bundle-repository", settings.checks_bundle_repository]
    else:
        flags.append("--skip-check-update")
    if settings.ignore_unfixed:
        flags.append("--ignore-unfixed")
    flags += ["--ignorefile", IGNOREFILE if ignorefile else ""]
    return flags


def describe(ctx: Context, image: str, with_vulnerabilities: bool = True) -> StepSpec:
    """Describe the scan. Without vulnerabilities, Trivy needs no database."""
    settings = ctx.settings.scan
    step_image = settings.image or ctx.settings.image
    venv, install = tool_venv(step_image, settings.trivy)
    trivy = f"{venv}/bin/trivy"
    ignorefile = find_ignorefile(ctx)
    flags = _common_flags(settings, ignorefile is not None)

    commands: list[tuple[str, ...]] = []
    image_scanners = "secret"
    if with_vulnerabilities:
        commands.append(
            (
                trivy, "image", "--download-db-only", "--no-progress",
                "--cache-dir", TRIVY_CACHE_PATH,
                "--db-repository", settings.db_repository,
                "--skip-version-check", "--disable-telemetry",
            )
        )
        image_scanners = "vuln,secret"
    commands.append(
        (
            trivy, "image", *flags, "--skip-db-update",
            "--input", IMAGE_TARBALL,
            "--scanners", image_scanners,
            "--image-config-scanners", "misconfig,secret",
            "--output", IMAGE_REPORT,
        )
    )
    if settings.source:
        commands.append(
            (
                trivy, "fs", *flags,
                "--scanners", "secret,misconfig",
                "--output", SOURCE_REPORT,
                SOURCE_PATH,
            )
        )
    outputs = [IMAGE_REPORT, SOURCE_REPORT] if settings.source else [IMAGE_REPORT]
    if ctx.sbom:
        commands.append(sbom_command(trivy))
        outputs.append(SBOM_REPORT)
    files = list(ctx.ca_files())
    if ignorefile is not None:
        files.append(FileMount(ignorefile, IGNOREFILE))
    return StepSpec(
        name=NAME,
        image=step_image,
        workdir=SCAN_WORKDIR,
        setup=(("mkdir", "-p", REPORTS_PATH, "/work"), install),
        commands=tuple(commands),
        env=ctx.common_env(),
        source=ctx.source() if settings.source else None,
        files=tuple(files),
        images=(ImageInput(image, IMAGE_TARBALL),),
        caches=(PIP_CACHE, TOOLS_CACHE, trivy_cache(settings)),
        outputs=tuple(outputs),
        needs=NEEDS,
        host_network=_is_loopback(settings.db_repository),
    )


def sbom_command(trivy: str) -> tuple[str, ...]:
    """Return the command that lists the image's packages as CycloneDX JSON.

    It needs no vulnerability database (checked with Trivy 0.76), so it
    works offline.
    """
    return (
        trivy, "image",
        "--cache-dir", TRIVY_CACHE_PATH,
        "--skip-version-check",
        "--disable-telemetry",
        "--skip-db-update",
        "--skip-java-db-update",
        "--offline-scan",
        "--no-progress",
        "--quiet",
        "--format", "cyclonedx",
        "--input", IMAGE_TARBALL,
        "--output", SBOM_REPORT,
    )


def find_ignorefile(ctx: Context) -> Path | None:
    """Return the file whose content is the project's Trivy ignore file, or None.

    Symbolic links in the project count only when they lead to a file inside
    the project, and then that file is returned. A link that leaves the
    project could hand a host file to the step container, so it raises
    ConfigError, as does a folder of that name. A path that the settings
    place outside the project is taken as it is.
    """
    project = ctx.project.path
    path = project / ctx.settings.scan.ignorefile
    if not path.exists() and not path.is_symlink():
        return None
    target = path.resolve()
    in_project = Path(os.path.normpath(path)).is_relative_to(project)
    if in_project and not target.is_relative_to(project):
        raise ConfigError(
            f"the Trivy ignore file {path} leads through a symbolic link to "
            f"{target}, outside the project (setting scan.ignorefile)",
            hint="replace the link with the file itself, or point it at a file "
            "inside the project",
        )
    if target.is_dir():
        raise ConfigError(
            f"the Trivy ignore file {path} is a folder (setting scan.ignorefile)",
            hint="make it a file with one finding ID per line, or set "
            "scan.ignorefile to such a file",
        )
    if not target.is_file():
        raise ConfigError(
            f"the Trivy ignore file {path} is not a regular file "
            "(setting scan.ignorefile)",
            hint="make it a file with one finding ID per line",
        )
    return target


def parse_trivy(
    report: dict[str, Any], gate: set[str], image: str | None = None
) -> list[Finding]:
    """Turn a Trivy JSON report into findings; ``gate`` holds the blocking
    severities. For an image report, ``image`` replaces the tarball path in
    targets and prefixes paths inside the image."""
    findings: list[Finding] = []
    for result in report.get("Results") or []:
        target = result.get("Target") or ""
        if image is None:
            path = target
        elif target.startswith(IMAGE_TARBALL):
            path = image + target.removeprefix(IMAGE_TARBALL)
        else:
            path = f"{image}:{target}"
        for vuln in result.get("Vulnerabilities") or []:
            severity = vuln.get("Severity", "UNKNOWN")
            package = vuln.get("PkgName")
            package_path = vuln.get("PkgPath")
            title = vuln.get("Title") or vuln.get("Description", "")[:120]
            findings.append(
                Finding(
                    tool="trivy",
                    rule=vuln.get("VulnerabilityID", "?"),
                    message=_vulnerability_message(vuln, title),
                    path=f"{image}:{package_path}" if image and package_path else path,
                    severity=severity,
                    blocking=severity in gate,
                    package=package,
                    installed_version=vuln.get("InstalledVersion"),
                    fixed_version=vuln.get("FixedVersion") or None,
                    image=image,
                    category="vulnerability",
                    title=title or None,
                    url=vuln.get("PrimaryURL") or None,
                    score=_cvss_score(vuln),
                )
            )
        for secret in result.get("Secrets") or []:
            severity = secret.get("Severity", "UNKNOWN")
            findings.append(
                Finding(
                    tool="trivy",
                    rule=secret.get("RuleID", "secret"),
                    message=f"secret: {secret.get('Title', '')}",
                    path=path,
                    line=secret.get("StartLine"),
                    severity=severity,
                    blocking=severity in gate,
                    image=image,
                    category="secret",
                    title=secret.get("Title") or None,
                )
            )
        for misconfig in result.get("Misconfigurations") or []:
            if misconfig.get("Status") != "FAIL":
                continue
            severity = misconfig.get("Severity", "UNKNOWN")
            cause = misconfig.get("CauseMetadata") or {}
            findings.append(
                Finding(
                    tool="trivy",
                    rule=misconfig.get("ID") or misconfig.get("AVDID", "?"),
                    message=misconfig.get("Message") or misconfig.get("Title", ""),
                    path=path,
                    line=cause.get("StartLine") or None,
                    severity=severity,
                    blocking=severity in gate,
                    image=image,
                    category="misconfiguration",
                    title=misconfig.get("Title") or None,
                    url=misconfig.get("PrimaryURL") or None,
                )
            )
    return findings


def _vulnerability_message(vulnerability: dict[str, Any], title: str) -> str:
    """Return "package version: title", plus "(fixed in X)" when a fix exists."""
    package = vulnerability.get("PkgName")
    version = vulnerability.get("InstalledVersion", "")
    message = f"{package} {version}: {title}".strip()
    fixed = vulnerability.get("FixedVersion")
    if fixed:
        message += f" (fixed in {fixed})"
    return message


def _cvss_score(vulnerability: dict[str, Any]) -> float | None:
    """Return the CVSS v3 base score of the source that set the severity."""
    source = vulnerability.get("SeveritySource")
    cvss = (vulnerability.get("CVSS") or {}).get(source) or {}
    score = cvss.get("V3Score")
    return float(score) if isinstance(score, (int, float)) and score > 0 else None


def image_metadata(report: dict[str, Any]) -> dict[str, object]:
    """Return the image ID, operating system and Trivy version of an image report."""
    metadata = report.get("Metadata") or {}
    details: dict[str, object] = {}
    if metadata.get("ImageID"):
        details["image_id"] = metadata["ImageID"]
    if metadata.get("RepoDigests"):
        details["repo_digests"] = list(metadata["RepoDigests"])
    operating_system = metadata.get("OS") or {}
    if operating_system.get("Family"):
        # family:version, such as debian:12.15
        name = operating_system.get("Name")
        family = operating_system["Family"]
        details["operating_system"] = f"{family}:{name}" if name else family
    version = (report.get("Trivy") or {}).get("Version")
    if version:
        details["trivy_version"] = version
    return details


def _load(path: Path | None) -> dict[str, Any] | None:
    if path is None or not path.is_file():
        return None
    try:
        data = json.loads(path.read_text())
    except json.JSONDecodeError:
        return None
    return data if isinstance(data, dict) else None


def trivy_command_name(command: tuple[str, ...]) -> str:
    """Name a Trivy command: "trivy image", "trivy fs" or the database download."""
    if "--download-db-only" in command:
        return "trivy database download"
    if "cyclonedx" in command:
        return "trivy SBOM"
    subcommand = command[1] if len(command) > 1 else ""
    return f"trivy {subcommand}".strip()


def describe_trivy_failure(result: CommandResult) -> str:
    """Summarize a failed Trivy command with its name and Trivy's own error."""
    summary = (
        f"{trivy_command_name(result.command)} failed with exit code {result.exit_code}"
    )
    output = result.output
    errors = [match["message"] for match in TRIVY_ERROR_LINE.finditer(output)]
    errors = errors or [match["message"] for match in TRIVY_USAGE_ERROR.finditer(output)]
    if errors:
        summary += ": " + errors[-1].strip()
    return summary


def _db_failed(execution: ExecResult) -> bool:
    return bool(execution.results) and execution.results[0].exit_code != 0


def judge(
    execution: ExecResult,
    settings: ScanSettings,
    image: str,
    vulnerabilities_scanned: bool,
) -> StepResult:
    if execution.setup_failed is not None:
        return StepResult(
            NAME,
            Status.FAILED,
            "installing trivy failed",
            output=tail(execution.setup_failed.output),
        )
    for result in execution.results:
        if result.exit_code != 0:
            return StepResult(
                NAME,
                Status.FAILED,
                describe_trivy_failure(result),
                output=tail(result.output),
            )
    gate: set[str] = set(settings.severity)
    findings: list[Finding] = []
    reports = []
    details: dict[str, object] = {"vulnerabilities_scanned": vulnerabilities_scanned}
    for container_path, image_name in ((IMAGE_REPORT, image), (SOURCE_REPORT, None)):
        host_path = execution.outputs.get(container_path)
        report = _load(host_path)
        if host_path is not None and report is not None:
            reports.append(host_path)
            findings += parse_trivy(report, gate, image_name)
            if image_name is not None:
                details.update(image_metadata(report))
    if IMAGE_REPORT not in execution.outputs:
        return StepResult(NAME, Status.FAILED, "trivy wrote no image report")

    blocking = [finding for finding in findings if finding.blocking]
    order: dict[str, int] = {
        severity: index for index, severity in enumerate(reversed(SEVERITIES))
    }
    findings.sort(key=lambda f: (not f.blocking, order.get(f.severity or "", 9)))
    gate_text = ",".join(sorted(gate, key=lambda s: order[s]))
    note = "" if vulnerabilities_scanned else " (no vulnerability database: secrets and misconfigurations only)"
    if blocking:
        return StepResult(
            NAME,
            Status.FAILED,
            f"{plural(len(blocking), 'finding')} at {gate_text}{note}",
            findings=findings,
            reports=reports,
            details=details,
        )
    summary = f"no findings at {gate_text}"
    if findings:
        summary += f", {len(findings)} below the threshold"
    return StepResult(
        NAME, Status.PASSED, summary + note, findings=findings, reports=reports, details=details
    )


async def run(ctx: Context, backend: Backend, on_output: StepOutputCallback) -> StepResult:
    if ctx.image is None:
        raise UsageError("no image to scan", hint="run build first or pass --image")
    settings = ctx.settings.scan
    spec = describe(ctx, ctx.image)
    execution = await backend.run(spec, ctx.reports_dir, on_output)
    if execution.setup_failed is None and _db_failed(execution):
        db_output = tail(execution.results[0].output, 15)
        if not settings.allow_missing_vuln_db:
            return StepResult(
                NAME,
                Status.FAILED,
                "vulnerability database could not be downloaded from "
                f"{settings.db_repository}; set scan.db_repository to a reachable "
                "mirror, or scan.allow_missing_vuln_db = true to scan without it",
                output=db_output,
                image=ctx.image,
            )
        spec = describe(ctx, ctx.image, with_vulnerabilities=False)
        execution = await backend.run(spec, ctx.reports_dir, on_output)
        result = judge(execution, settings, ctx.image, vulnerabilities_scanned=False)
    else:
        result = judge(execution, settings, ctx.image, vulnerabilities_scanned=True)
    result.image = ctx.image
    result.reports.append(save_log(ctx, NAME, execution))
    return result
