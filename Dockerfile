# The project's images, built without a registry and without network access to PyPI (docs: README
# "Deploying with containers").  Every stage starts from a local Debian bookworm base image
# (debootstrap --variant=minbase + docker import; tests/compose/engine.py makes it) and installs Python
# packages only from the wheelhouse built on the host from the hash-pinned locks (make wheelhouse):
#   pip install --no-index --find-links <wheelhouse> --require-hashes -r requirements.lock
# Targets:
#   app      the production image: workers, beat, Flower, the metrics exporter, backupctl
#            (runtime requirements only: no pytest, no aiosmtpd)
#   tryout   app + OpenSSH server + the test requirements + Hadoop's jars: the try-out services of
#            docker-compose.yml (Spark from the pyspark wheel, HDFS and YARN by local_platform/hadoop.py,
#            the edge node, the mail/ticket sink of local_platform)
#   redis    Debian's redis-server (AOF and noeviction are set by docker-compose.yml's command)
# No secret, key or certificate is baked in: they come from the environment or mounted files.
# Hadoop's jars and the compiled launcher come from the host too (python -m local_platform.hadoop install
# --home .compose/hadoop, from Maven Central; make wheelhouse does both): no network access in a build but apt.
# Classic builder and BuildKit alike (Docker 20.10 / docker-compose 1.29): no BuildKit-only syntax.  The compose
# test builds with BuildKit (DOCKER_BUILDKIT=1): independent stages at once, faster COPY --from.
ARG BASE_IMAGE=mediation-backup/base:bookworm

FROM ${BASE_IMAGE} AS os
ENV DEBIAN_FRONTEND=noninteractive LANG=C.UTF-8
# dpkg without an fsync per file, as Debian's official container images do: a failed build is thrown away anyway.
RUN echo force-unsafe-io > /etc/dpkg/dpkg.cfg.d/docker-apt-speedup
# Java: the Spark JVM of the try-out stack and spark-submit drivers (spark.remote = local/yarn master).
RUN apt-get update -qq \
 && apt-get install -y -qq --no-install-recommends \
      python3 python3-venv ca-certificates openssh-client openjdk-17-jre-headless >/dev/null \
 && rm -rf /var/lib/apt/lists/* /var/cache/apt/*.bin

# The virtualenv, from the wheelhouse only (the wheelhouse stays in this stage, not in the images).
FROM os AS venv
ARG WHEELHOUSE=.compose/wheelhouse
COPY ${WHEELHOUSE} /wheels
COPY requirements.lock requirements-test.lock deploy/build-requirements.lock /locks/
# requirements.image.lock (deploy/wheelhouse.py): requirements.lock plus the hashes of the wheels the host built
# from the lock's sdists (pyspark); checked here to add hashes and nothing else.
RUN python3 -c "import sys; a = open('/locks/requirements.lock').read().splitlines(); \
b = open('/wheels/requirements.image.lock').read().splitlines(); \
sys.exit(0 if len(a) == len(b) and all(y == x or y.startswith(x + ' --hash=sha256:') for x, y in zip(a, b)) \
else 'the wheelhouse was made for other locks than -r /locks/requirements.lock: make wheelhouse')" \
 && python3 -m venv /opt/venv \
 && /opt/venv/bin/pip install -q --no-index --find-links /wheels --require-hashes --no-deps \
      -r /locks/build-requirements.lock \
 && /opt/venv/bin/pip install -q --no-index --find-links /wheels --require-hashes --no-build-isolation \
      -r /wheels/requirements.image.lock \
 && /opt/venv/bin/pip wheel -q --no-index --find-links /wheels --require-hashes --no-deps \
      -r /locks/requirements-test.lock -w /wheels-test

FROM os AS app
COPY --from=venv /opt/venv /opt/venv
ENV PATH=/opt/venv/bin:$PATH PYTHONUNBUFFERED=1 BACKUP_CONFIG=/etc/mediation-backup/config.yaml
WORKDIR /app
COPY pyproject.toml ./
COPY base ./base
COPY backup ./backup
COPY connectors ./connectors
COPY storage ./storage
COPY config ./config
COPY tasks ./tasks
COPY workers ./workers
COPY local_platform ./local_platform
COPY deploy/edge-node.sh ./deploy/
COPY deploy/hadoop-health.sh ./deploy/
RUN pip install -q --no-index --no-deps --no-build-isolation . && rm -rf build *.egg-info
# Same uid in every container: the worker reads the edge node's client key from a shared volume.
# (Debian has a system user "backup" already, with no login shell: ours is "mediation".)
RUN useradd --create-home --shell /bin/sh --uid 10001 mediation \
 && mkdir -p /var/lib/mediation-backup/exports /var/lib/mediation-backup/spark /var/lib/mediation-backup/sinks \
      /var/lib/mediation-backup/customer-files /var/lib/mediation-backup/hadoop /backups/edge /ssh \
 && chown -R mediation /var/lib/mediation-backup /backups/edge
USER mediation
CMD ["backupctl", "--help"]

FROM app AS tryout
USER root
# HDFS and YARN of the try-out stack: python -m local_platform.hadoop hdfs|yarn --home /opt/hadoop.
ARG HADOOP_JARS=.compose/hadoop
COPY ${HADOOP_JARS}/lib /opt/hadoop/lib
COPY ${HADOOP_JARS}/classes /opt/hadoop/classes
COPY --from=venv /wheels-test /tmp/wheels-test
COPY requirements-test.lock /tmp/
RUN apt-get update -qq \
 && apt-get install -y -qq --no-install-recommends openssh-server >/dev/null \
 && rm -rf /var/lib/apt/lists/* /var/cache/apt/*.bin /etc/ssh/ssh_host_* \
 && pip install -q --no-index --find-links /tmp/wheels-test --require-hashes -r /tmp/requirements-test.lock \
 && rm -rf /tmp/wheels-test /tmp/requirements-test.lock
USER mediation

FROM ${BASE_IMAGE} AS redis
RUN echo force-unsafe-io > /etc/dpkg/dpkg.cfg.d/docker-apt-speedup \
 && apt-get update -qq \
 && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends redis-server >/dev/null \
 && rm -rf /var/lib/apt/lists/* /var/cache/apt/*.bin \
 && mkdir -p /data && chown redis:redis /data
USER redis
WORKDIR /data

# The default target (docker build . without --target): the production image.
FROM app AS production
