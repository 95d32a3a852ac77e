"""A client for the registry HTTP API (OCI distribution, Docker Registry V2)
that pushes one image: credentials first, then blobs, the manifest by digest,
and the tags last.

It uses ``requests`` directly, because a publish needs control that
registry client libraries such as oras-py do not give. It sets the order of
the uploads, sends a HEAD per blob to skip what the registry has, and
retries each request with logged backoff (``tenacity``). It also trusts the
run's CA bundle and raises errors that name the registry and the fix.
"""

from __future__ import annotations

import base64
import hashlib
import logging
import re
import ssl
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlencode, urljoin, urlsplit

import requests
import tenacity
from urllib3.exceptions import NameResolutionError, NewConnectionError

from .errors import PublishFailed
from .spec import PublishOutput

log = logging.getLogger(__name__)

MANIFEST_V2 = "application/vnd.docker.distribution.manifest.v2+json"
CONFIG_V1 = "application/vnd.docker.container.image.v1+json"
LAYER_GZIP = "application/vnd.docker.image.rootfs.diff.tar.gzip"
# Without a matching Accept header, distribution 2.8 returns a schema 2
# manifest converted to schema 1.
MANIFEST_ACCEPT = ", ".join(
    (
        MANIFEST_V2,
        "application/vnd.docker.distribution.manifest.list.v2+json",
        "application/vnd.oci.image.manifest.v1+json",
        "application/vnd.oci.image.index.v1+json",
    )
)
LOOPBACK_HOSTS = frozenset({"127.0.0.1", "localhost", "::1"})
DOCKER_HUB = "docker.io"
DOCKER_HUB_API = "registry-1.docker.io"
# Seconds to wait for a connection, and between two bytes of a response.
CONNECT_TIMEOUT = 10.0
READ_TIMEOUT = 300.0
# Exponential backoff between attempts: 0.5 s, 1 s, 2 s, ... up to 30 s.
BACKOFF_SECONDS = 0.5
BACKOFF_MAX_SECONDS = 30.0
# Statuses that a retry may cure: rate limits and server-side errors.
TRANSIENT_STATUSES = frozenset({408, 429, 500, 502, 503, 504})
AUTH_PARAMETER = re.compile(r'(\w+)="([^"]*)"')

Notify = Callable[[str], None]


def split_repository(repository: str) -> tuple[str, str]:
    """Split ``host[:port]/path`` into registry host and repository path.

    A first component without ``.`` or ``:`` that is not ``localhost`` is a
    Docker Hub path, as the docker client reads it, and a single Docker Hub
    component gets ``library/``.
    """
    first, _, rest = repository.partition("/")
    if rest and ("." in first or ":" in first or first == "localhost"):
        host, path = first, rest
    else:
        host, path = DOCKER_HUB, repository
    if host == DOCKER_HUB and "/" not in path:
        path = f"library/{path}"
    return host, path


def hostname(host: str) -> str:
    """Return the host name of ``host[:port]`` without brackets or port."""
    return urlsplit(f"//{host}").hostname or host


def is_loopback(host: str) -> bool:
    return hostname(host) in LOOPBACK_HOSTS


def base_url(host: str, insecure: bool) -> str:
    """Return the registry's URL: HTTP for loopback or ``insecure``, else HTTPS."""
    scheme = "http" if insecure or is_loopback(host) else "https"
    return f"{scheme}://{DOCKER_HUB_API if host == DOCKER_HUB else host}"


# -- the image as the registry stores it -------------------------------------


@dataclass(frozen=True)
class Blob:
    """A blob's descriptor and its content on disk.

    path is None for a layer taken from the local layer cache without
    compressing it, because the registry already had the blob.
    """

    digest: str
    size: int
    media_type: str
    path: Path | None


@dataclass(frozen=True)
class PreparedImage:
    """An image's blobs on disk and its schema 2 manifest, ready to push."""

    config: Blob
    layers: tuple[Blob, ...]
    manifest: bytes

    @property
    def digest(self) -> str:
        return sha256_digest(self.manifest)

    def blobs(self) -> list[Blob]:
        """Return the config and the layers, each digest once."""
        unique = {blob.digest: blob for blob in (*self.layers, self.config)}
        return list(unique.values())


def sha256_digest(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


# -- talking to the registry -------------------------------------------------


class _Transient(Exception):
    """A failure that another attempt may cure (5xx, 429, connection reset)."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


@dataclass
class _Challenge:
    scheme: str
    parameters: dict[str, str]


def parse_challenge(header: str) -> _Challenge:
    """Parse a ``WWW-Authenticate`` header such as ``Bearer realm="...",service="..."``."""
    scheme, _, rest = header.strip().partition(" ")
    return _Challenge(scheme.lower(), dict(AUTH_PARAMETER.findall(rest)))


def _registry_errors(response: requests.Response) -> str:
    """Return the registry's error codes and messages, or the HTTP reason."""
    try:
        body = response.json()
    except ValueError:
        body = None
    errors = body.get("errors") if isinstance(body, dict) else None
    if isinstance(errors, list) and errors:
        parts = [
            f"{error.get('code', '?')}: {error.get('message', '')}".strip(": ")
            for error in errors
            if isinstance(error, dict)
        ]
        return f"HTTP {response.status_code} " + "; ".join(parts)
    return f"HTTP {response.status_code} {response.reason}"


def _tls_problem(exc: requests.exceptions.SSLError) -> str:
    """Return the TLS library's own message, such as ``[SSL:
    CERTIFICATE_VERIFY_FAILED] certificate verify failed: ...``."""
    cause: BaseException | None = exc
    while cause is not None:
        if isinstance(cause, ssl.SSLError) and cause.args:
            return str(cause.args[-1])
        reason = cause.args[0] if cause.args else None
        reason = getattr(reason, "reason", reason)
        if isinstance(reason, BaseException) and reason is not cause:
            cause = reason
        elif cause.args and isinstance(cause.args[0], BaseException):
            cause = cause.args[0]
        else:
            break
    return str(exc)


def _connection_problem(exc: requests.RequestException) -> str | None:
    """Return why no connection could be made at all (refused, unknown host),
    which no retry cures, or None for a failure on a working connection."""
    reason = exc.args[0] if exc.args else None
    reason = getattr(reason, "reason", reason)
    if isinstance(reason, NameResolutionError):
        return "the host name cannot be resolved"
    if isinstance(reason, NewConnectionError):
        return "connection refused or no route to the host"
    return None


class RegistryClient:
    """One repository of one registry, with the credentials of a publish.

    Every request is tried up to ``attempts`` times on a transient failure,
    with exponential backoff; ``notify`` receives a line per retry and per
    upload. ``username`` and ``password`` are never logged.
    """

    def __init__(
        self,
        repository: str,
        *,
        username: str | None,
        password: str | None,
        insecure: bool = False,
        ca_bundle: Path | None = None,
        attempts: int = 4,
        notify: Notify = lambda line: None,
        backoff: float = BACKOFF_SECONDS,
        password_source: str | None = None,
    ) -> None:
        self.repository = repository
        self.host, self.path = split_repository(repository)
        self.url = base_url(self.host, insecure)
        self.username = username
        self._password = password
        # Where the password comes from (a secret reference), for messages.
        self.password_source = password_source or "the password"
        self.attempts = attempts
        self.notify = notify
        self.backoff = backoff
        self.session = requests.Session()
        if is_loopback(self.host):
            # No proxy from the environment for a registry on this machine.
            self.session.trust_env = False
        # Passed with every request, because requests lets REQUESTS_CA_BUNDLE
        # override a session's own ``verify``.
        self._verify: str | bool = str(ca_bundle) if ca_bundle is not None else True
        self._authorization: str | None = None
        self._challenge: _Challenge | None = None

    def close(self) -> None:
        self.session.close()

    def __enter__(self) -> RegistryClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- requests with retries ------------------------------------------------

    def _request(
        self,
        method: str,
        url: str,
        action: str,
        *,
        headers: dict[str, str] | None = None,
        body: Callable[[], Any] | None = None,
        auth: bool = True,
    ) -> requests.Response:
        """Send one request, retried on transient failures.

        ``body`` opens the request body afresh for every attempt. Raises
        PublishFailed when the registry cannot be reached, or when every
        attempt failed.
        """
        retrying = self._retrying(action)
        try:
            for attempt in retrying:
                with attempt:
                    return self._send(method, url, headers or {}, body, auth)
        except _Transient as exc:
            raise PublishFailed(
                f"registry {self.host}: {action} failed after {self.attempts} "
                f"attempts: {exc.reason}",
                hint="the registry had a server-side or network problem; run "
                "again later, or raise publish.attempts",
            ) from None
        raise AssertionError("unreachable: tenacity either returns or raises")

    def _retrying(self, action: str) -> tenacity.Retrying:
        """Retry ``_Transient`` failures with exponential backoff, logging each retry."""
        return tenacity.Retrying(
            stop=tenacity.stop_after_attempt(self.attempts),
            wait=tenacity.wait_exponential(multiplier=self.backoff, max=BACKOFF_MAX_SECONDS),
            retry=tenacity.retry_if_exception_type(_Transient),
            before_sleep=lambda state: self._log_retry(action, state),
            reraise=True,
        )

    def _send(
        self,
        method: str,
        url: str,
        headers: dict[str, str],
        body: Callable[[], Any] | None,
        auth: bool,
    ) -> requests.Response:
        with _opened(body) as data:
            response = self._send_once(method, url, headers, data, auth)
        if response.status_code == 401 and auth and self._reauthenticate(response):
            with _opened(body) as data:
                response = self._send_once(method, url, headers, data, auth)
        if response.status_code in TRANSIENT_STATUSES:
            raise _Transient(_registry_errors(response))
        return response

    def _send_once(
        self, method: str, url: str, headers: dict[str, str], data: Any, auth: bool
    ) -> requests.Response:
        headers = dict(headers)
        if auth and self._authorization is not None:
            headers["Authorization"] = self._authorization
        try:
            return self.session.request(
                method,
                url,
                headers=headers,
                data=data,
                verify=self._verify,
                timeout=(CONNECT_TIMEOUT, READ_TIMEOUT),
                allow_redirects=method in ("GET", "HEAD"),
            )
        except requests.exceptions.SSLError as exc:
            raise PublishFailed(
                f"registry {self.host}: TLS connection to {self.url} failed: {_tls_problem(exc)}",
                hint="trust the registry's certificate authority with ca_bundle, "
                "or, for a registry that serves plain HTTP, set insecure = true "
                "in the environment's registry settings",
            ) from None
        except (requests.ConnectionError, requests.Timeout) as exc:
            problem = _connection_problem(exc)
            if problem is not None:
                raise PublishFailed(
                    f"registry {self.host} cannot be reached at {self.url}: {problem}",
                    hint="check the host and port in the environment's registry "
                    "repository setting, and that the registry is running",
                ) from None
            raise _Transient(f"{type(exc).__name__}: {exc}") from None
        except requests.exceptions.ChunkedEncodingError as exc:
            raise _Transient(f"incomplete response: {exc}") from None
        except requests.RequestException as exc:
            raise PublishFailed(f"registry {self.host}: {method} {url} failed: {exc}") from None

    def _log_retry(self, action: str, state: tenacity.RetryCallState) -> None:
        error = state.outcome.exception() if state.outcome is not None else None
        reason = error.reason if isinstance(error, _Transient) else str(error)
        delay = state.next_action.sleep if state.next_action is not None else 0.0
        line = (
            f"registry {self.host}: {action} failed ({reason}); retrying in "
            f"{delay:.1f} s (attempt {state.attempt_number + 1} of {self.attempts})"
        )
        log.warning("%s", line)
        self.notify(line)

    # -- credentials ----------------------------------------------------------

    def check_access(self) -> None:
        """Check that the registry responds and accepts the credentials.

        Raises PublishFailed, before anything is pushed, for a registry that
        cannot be reached, a server that is not a registry, missing or
        rejected credentials.
        """
        response = self._request("GET", self._url("/v2/"), "GET /v2/", auth=False)
        if response.status_code == 401:
            self._challenge = parse_challenge(response.headers.get("WWW-Authenticate", ""))
            if self.username is None or self._password is None:
                raise PublishFailed(
                    f"registry {self.host} requires credentials, and none are set",
                    hint="set username and password (a secret reference such as "
                    "env://REGISTRY_PASSWORD) in the environment's registry settings",
                )
            self._authenticate()
            response = self._request("GET", self._url("/v2/"), "GET /v2/")
            if response.status_code == 401:
                raise self._rejected(response)
        if response.status_code != 200 or not _looks_like_registry(response):
            raise PublishFailed(
                f"{self.url} is not a container registry: GET /v2/ returned "
                f"{_registry_errors(response)}",
                hint="point the environment's registry repository at a registry "
                "(host[:port]/path/name)",
            )
        log.info("registry %s accepts the credentials of %s", self.host, self.username)

    def _rejected(self, response: requests.Response) -> PublishFailed:
        return PublishFailed(
            f"registry {self.host} rejected the credentials of user "
            f"{self.username!r} ({_registry_errors(response)}): wrong user name or "
            "password, or the user may not push",
            hint=f"check the user name and the password in {self.password_source} "
            "(the username and password of the environment's registry settings)",
        )

    def _authenticate(self) -> None:
        challenge = self._challenge
        if challenge is None or challenge.scheme not in ("basic", "bearer"):
            scheme = challenge.scheme if challenge else "none"
            raise PublishFailed(
                f"registry {self.host} asks for authentication scheme {scheme!r}, "
                "which the pipeline does not support",
                hint="use a registry with Basic or Bearer token authentication",
            )
        assert self.username is not None and self._password is not None
        if challenge.scheme == "basic":
            self._authorization = _basic_authorization(self.username, self._password)
        else:
            self._authorization = f"Bearer {self._fetch_token(challenge)}"

    def _fetch_token(self, challenge: _Challenge) -> str:
        """Get a token for pull and push from the registry's token service."""
        realm = challenge.parameters.get("realm")
        if not realm:
            raise PublishFailed(f"registry {self.host} sent a Bearer challenge without a realm")
        # NOTE: the tests run only against htpasswd (Basic) registries, so
        # this token exchange has not run against a real token service.
        query = {"scope": f"repository:{self.path}:pull,push"}
        if "service" in challenge.parameters:
            query["service"] = challenge.parameters["service"]
        assert self.username is not None and self._password is not None
        basic = _basic_authorization(self.username, self._password)
        response = self._request(
            "GET",
            f"{realm}?{urlencode(query)}",
            "token request",
            headers={"Authorization": basic},
            auth=False,
        )
        if response.status_code in (401, 403):
            raise self._rejected(response)
        try:
            body = response.json()
        except ValueError:
            body = {}
        token = body.get("token") or body.get("access_token") if isinstance(body, dict) else None
        if response.status_code != 200 or not token:
            raise PublishFailed(
                f"registry {self.host}: the token service {realm} returned "
                f"{_registry_errors(response)} and no token"
            )
        return str(token)

    def _reauthenticate(self, response: requests.Response) -> bool:
        """Authenticate again after a 401, once per request: a token may have
        expired, or a registry that allowed ``GET /v2/`` anonymously may
        require credentials to push. Return whether the request is worth
        sending again."""
        header = response.headers.get("WWW-Authenticate")
        if header is None or self.username is None or self._password is None:
            return False
        challenge = parse_challenge(header)
        if challenge.scheme == "basic" and self._challenge is not None:
            return False  # the credentials were sent, and rejected
        self._challenge = challenge
        self._authenticate()
        return True

    # -- blobs, manifests and tags -------------------------------------------

    def _url(self, path: str) -> str:
        return self.url + path

    def _expect(self, response: requests.Response, statuses: tuple[int, ...], action: str) -> None:
        if response.status_code in statuses:
            return
        if response.status_code in (401, 403):
            raise PublishFailed(
                f"registry {self.host} denied {action} ({_registry_errors(response)})",
                hint=f"give user {self.username!r} push access to {self.path}",
            )
        raise PublishFailed(f"registry {self.host}: {action} failed: {_registry_errors(response)}")

    def blob_exists(self, digest: str) -> bool:
        action = f"HEAD blob {digest}"
        response = self._request("HEAD", self._url(f"/v2/{self.path}/blobs/{digest}"), action)
        if response.status_code == 404:
            return False
        self._expect(response, (200,), action)
        return True

    def upload_blob(self, blob: Blob) -> None:
        """Upload a blob in one piece: POST an upload, then PUT its content."""
        action = f"upload of blob {blob.digest}"
        if blob.path is None:
            raise PublishFailed(
                f"registry {self.host}: blob {blob.digest} disappeared from {self.path} "
                "during the publish, and it was not compressed here because the registry had it",
                hint="run the publish again: it compresses the layers that the registry lacks",
            )
        path = blob.path
        retrying = self._retrying(action)
        # Each request is retried by itself; a failed PUT also restarts the
        # upload, because a registry may drop an upload that failed.
        try:
            for attempt in retrying:
                with attempt:
                    self._upload_once(blob, path, action)
        except _Transient as exc:
            raise PublishFailed(
                f"registry {self.host}: {action} failed after {self.attempts} "
                f"attempts: {exc.reason}",
                hint="run again later, or raise publish.attempts",
            ) from None

    def _upload_once(self, blob: Blob, path: Path, action: str) -> None:
        start = self._request("POST", self._url(f"/v2/{self.path}/blobs/uploads/"), action)
        self._expect(start, (202,), action)
        location = start.headers.get("Location")
        if not location:
            raise PublishFailed(f"registry {self.host}: {action}: no upload location in the response")
        location = urljoin(self.url + "/", location)
        separator = "&" if "?" in location else "?"
        target = f"{location}{separator}{urlencode({'digest': blob.digest})}"
        headers = {"Content-Type": "application/octet-stream", "Content-Length": str(blob.size)}
        with _opened(lambda: path.open("rb")) as data:
            response = self._send_once("PUT", target, headers, data, auth=True)
        if response.status_code in TRANSIENT_STATUSES:
            raise _Transient(_registry_errors(response))
        self._expect(response, (201, 204), action)

    def put_manifest(self, reference: str, manifest: bytes, media_type: str = MANIFEST_V2) -> str:
        """PUT the manifest under a digest or tag; return the digest the registry stored."""
        action = f"PUT manifest {reference}"
        response = self._request(
            "PUT",
            self._url(f"/v2/{self.path}/manifests/{reference}"),
            action,
            headers={"Content-Type": media_type},
            body=lambda: manifest,
        )
        self._expect(response, (200, 201), action)
        return response.headers.get("Docker-Content-Digest") or sha256_digest(manifest)

    def manifest_digest(self, reference: str) -> str | None:
        """Return the digest that a tag points at, or None when it does not exist."""
        action = f"HEAD manifest {reference}"
        response = self._request(
            "HEAD",
            self._url(f"/v2/{self.path}/manifests/{reference}"),
            action,
            headers={"Accept": MANIFEST_ACCEPT},
        )
        if response.status_code == 404:
            return None
        self._expect(response, (200,), action)
        return response.headers.get("Docker-Content-Digest")

    def tags_pointing_at(self, digest: str, tags: tuple[str, ...]) -> tuple[str, ...]:
        return tuple(tag for tag in tags if self.manifest_digest(tag) == digest)

    # -- a whole push ------------------------------------------------------------

    def push(self, image: PreparedImage, tags: tuple[str, ...]) -> PublishOutput:
        """Push blobs the registry lacks, the manifest by digest, then each tag.

        Raises PublishFailed naming the tags that point at the image when a
        request fails after the first upload.
        """
        digest = image.digest
        try:
            self._push_blobs(image)
            stored = self.put_manifest(digest, image.manifest)
            if stored != digest:
                raise PublishFailed(
                    f"registry {self.host} stored the manifest as {stored}, "
                    f"expected {digest}"
                )
            self.notify(f"pushed manifest {self.repository}@{digest}")
            for tag in tags:
                self.put_manifest(tag, image.manifest)
                self.notify(f"tagged {self.repository}:{tag}")
        except PublishFailed as exc:
            raise self._failed_midway(exc, digest, tags) from None
        return PublishOutput(digest, f"{self.repository}@{digest}", tags)

    def _push_blobs(self, image: PreparedImage) -> None:
        for blob in image.blobs():
            megabytes = blob.size / 1e6
            if self.blob_exists(blob.digest):
                self.notify(f"blob {blob.digest} ({megabytes:.1f} MB) already in the registry")
                continue
            self.upload_blob(blob)
            self.notify(f"uploaded blob {blob.digest} ({megabytes:.1f} MB)")

    def _failed_midway(
        self, exc: PublishFailed, digest: str, tags: tuple[str, ...]
    ) -> PublishFailed:
        try:
            existing = self.tags_pointing_at(digest, tags)
        except PublishFailed as query:
            return PublishFailed(
                f"{exc.message}; which tags exist is unknown, because the "
                f"registry could not be queried: {query.message}",
                hint=exc.hint,
            )
        missing = [tag for tag in tags if tag not in existing]
        state = (
            f"tags that point at {digest} now: {', '.join(existing)}"
            if existing
            else f"no tag points at {digest}"
        )
        return PublishFailed(
            f"{exc.message}; {state}; not pushed: {', '.join(missing) or 'none'}",
            hint=exc.hint or "run the publish again: it pushes only what is missing",
            existing_tags=existing,
        )


def _basic_authorization(username: str, password: str) -> str:
    credentials = f"{username}:{password}".encode()
    return "Basic " + base64.b64encode(credentials).decode("ascii")


def _looks_like_registry(response: requests.Response) -> bool:
    """Return whether a 200 from /v2/ came from a registry, not a web server.

    Registries send the ``Docker-Distribution-API-Version`` header or JSON.
    """
    if "Docker-Distribution-API-Version" in response.headers:
        return True
    return "json" in response.headers.get("Content-Type", "")


@contextmanager
def _opened(body: Callable[[], Any] | None) -> Iterator[Any]:
    """Open a request body, closing it afterwards when it is a file."""
    data = body() if body is not None else None
    try:
        yield data
    finally:
        close = getattr(data, "close", None)
        if callable(close):
            close()
