# The UrbanPulse services' image: one image, the command chooses the service
# (urbanpulse db migrate | ingest | rules run | notify). Used by deploy/compose.yaml.
FROM python:3.11-slim
ENV PYTHONDONTWRITEBYTECODE=1 PYTHONUNBUFFERED=1
WORKDIR /opt/urbanpulse
COPY pyproject.toml README.md ./
COPY urbanpulse ./urbanpulse
COPY ingest ./ingest
COPY rules ./rules
COPY simulators ./simulators
RUN pip install --no-cache-dir . && useradd --system urbanpulse
USER urbanpulse
ENTRYPOINT ["urbanpulse"]
CMD ["status"]
