# syntax=docker/dockerfile:1
# dvid2ng worker image for the Cloud Run fleet (docs/deploy.md):
#   docker build -t REGION-docker.pkg.dev/PROJECT/dvid2ng/dvid2ng:TAG .
# The entrypoint is `dvid2ng worker`; the worker pool's environment says which queue, state,
# tier, memory budget and threads (DVID2NG_QUEUE, DVID2NG_STATE, DVID2NG_TIER,
# DVID2NG_MEMORY_BUDGET_BYTES, DVID2NG_THREADS; terraform/workers.tf). No credentials are in
# the image: on Cloud Run the pool's service account provides them.
# Not built in this repository's CI (no Docker engine there); tests/infra lint this file and run
# its warm-up step.

FROM python:3.11-slim-bookworm AS build
ENV PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1
WORKDIR /src
COPY pyproject.toml README.md ./
COPY schemas/ schemas/
COPY kernels/ kernels/
COPY worker/ worker/
COPY dispatcher/ dispatcher/
COPY backends/ backends/
COPY dvidexport/ dvidexport/
RUN python -m venv /opt/dvid2ng && /opt/dvid2ng/bin/pip install .

FROM python:3.11-slim-bookworm
# Numba caches compiled kernels per CPU target: pin one (not the build host's CPU) so the cache
# warmed here is the one Cloud Run's machines use. x86-64-v2 (SSE4.2, POPCNT) runs on every
# x86-64 server CPU since 2009; the kernels measured no slower than with the host's own CPU
# (bench/bench_numba_cache.py, docs/performance.md). --build-arg NUMBA_CPU_NAME=x86-64-v3 for AVX2.
ARG NUMBA_CPU_NAME=x86-64-v2
ENV PATH=/opt/dvid2ng/bin:$PATH \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    NUMBA_CACHE_DIR=/var/cache/dvid2ng/numba \
    NUMBA_CPU_NAME=${NUMBA_CPU_NAME} \
    NUMBA_CPU_FEATURES="" \
    DVID2NG_LOG_FORMAT=json
RUN useradd --system --uid 10001 --create-home --home-dir /home/dvid2ng --shell /usr/sbin/nologin dvid2ng \
    && mkdir -p /var/cache/dvid2ng/numba \
    && chown -R 10001 /var/cache/dvid2ng
COPY --from=build /opt/dvid2ng /opt/dvid2ng
USER 10001
WORKDIR /home/dvid2ng
# Warm the Numba cache as the user that runs the worker, with the installed package at the path
# it runs from: Numba keys the cache by source path and mtime, and needs the cache directory
# writable by that user. A worker's first shard then loads the kernels instead of compiling
# them (about a minute on one core), and Numba's runtime from its file (kernels/nrt_cache.py).
RUN python -c "import dvid2ng.kernels as k; k.warm_up_for_workers()"
ENTRYPOINT ["dvid2ng", "worker"]
