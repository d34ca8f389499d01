# The UrbanPulse services' image: one image, the command chooses the service
# (urbanpulse db migrate | ingest | rules run | notify | api). Used by deploy/compose.yaml.
FROM python:3.11-slim
ENV PYTHONDONTWRITEBYTECODE=1 PYTHONUNBUFFERED=1
WORKDIR /opt/urbanpulse
COPY pyproject.toml README.md ./
# every package the wheel holds (pyproject.toml); bench/ and tests/ stay out
COPY urbanpulse ./urbanpulse
COPY simulators ./simulators
COPY ingest ./ingest
COPY rules ./rules
COPY notify ./notify
COPY dashboards ./dashboards
COPY api ./api
COPY demo ./demo
RUN pip install --no-cache-dir . && useradd --system urbanpulse
USER urbanpulse
ENTRYPOINT ["urbanpulse"]
CMD ["status"]
