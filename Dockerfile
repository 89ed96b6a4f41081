# Worker image for the Cloud Run fleet (the same code as the embedded default).
# Not built in this repository's CI (no Docker engine on the build machines).
FROM python:3.11-slim
ENV PYTHONDONTWRITEBYTECODE=1 PYTHONUNBUFFERED=1 NUMBA_CACHE_DIR=/opt/numba-cache DVID2NG_LOG_FORMAT=json
WORKDIR /app
COPY pyproject.toml README.md ./
COPY schemas schemas
COPY kernels kernels
COPY worker worker
COPY dispatcher dispatcher
COPY backends backends
COPY dvidexport dvidexport
RUN pip install --no-cache-dir . \
 && python -c "import dvid2ng.kernels as k; k.warm_up()"   # compile the Numba kernels into the image's cache
ENTRYPOINT ["dvid2ng"]
CMD ["--help"]
