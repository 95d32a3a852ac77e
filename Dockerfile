# The pipeline's own image, used as the job image in CI. It carries Debian's
# docker client (20.10, BuildKit built in) for the build step, and talks to
# the engine named by DOCKER_HOST (Docker in Docker on GitLab CI).
FROM python:3.11-slim

RUN apt-get update \
    && apt-get install -y --no-install-recommends docker.io git \
    && rm -rf /var/lib/apt/lists/*

WORKDIR /opt/pipeline
COPY pyproject.toml README.md ./
COPY pipeline ./pipeline
# Optional extras, such as "kubernetes" (kubectl and the manifest schemas)
# for images that deploy to Kubernetes: --build-arg EXTRAS=kubernetes.
ARG EXTRAS=""
# A build secret named "ca" lets pip trust a TLS-inspecting proxy; without
# one, pip uses the CA bundle of the base image.
RUN --mount=type=secret,id=ca \
    if [ -s /run/secrets/ca ]; then export PIP_CERT=/run/secrets/ca; fi; \
    pip install --no-cache-dir ".${EXTRAS:+[$EXTRAS]}" && pipeline --version

RUN useradd --uid 10001 --create-home pipeline
USER 10001
WORKDIR /workspace
HEALTHCHECK NONE
ENTRYPOINT ["pipeline"]
CMD ["--help"]
