# The project image: Celery workers, beat, Flower and the metrics exporter (backupctl), plus the
# try-out services of docker-compose.yml (Spark from the pyspark wheel, the OpenSSH edge node, the mail sink).
# local_platform (development tooling) is copied only because the try-out mail service runs its sinks;
# the production services never import it.
FROM python:3.11-slim-bookworm

RUN apt-get update \
 && DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends \
      openjdk-17-jre-headless openssh-server openssh-client \
 && rm -rf /var/lib/apt/lists/*

WORKDIR /app
COPY requirements.txt ./
RUN pip install --no-cache-dir -r requirements.txt
COPY pyproject.toml ./
COPY base ./base
COPY backup ./backup
COPY connectors ./connectors
COPY storage ./storage
COPY config ./config
COPY tasks ./tasks
COPY workers ./workers
COPY local_platform ./local_platform
COPY deploy ./deploy
RUN pip install --no-cache-dir --no-deps .

# Same uid in every container: the worker reads the edge node's client key from a shared volume.
RUN useradd --create-home --uid 10001 backup \
 && mkdir -p /var/lib/mediation-backup/exports /var/lib/mediation-backup/spark /var/lib/mediation-backup/sinks \
      /backups/edge /ssh \
 && chown -R backup /var/lib/mediation-backup
USER backup
ENV BACKUP_CONFIG=/etc/mediation-backup/config.yaml \
    PYTHONUNBUFFERED=1
CMD ["backupctl", "--help"]
