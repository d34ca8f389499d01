-- Core tables: the device registry, readings and quarantine.
-- Works on plain PostgreSQL 15; the storage policy step turns readings into a TimescaleDB
-- hypertable when the extension is present. Hence: no foreign keys into readings, and its
-- unique key includes the time column.

CREATE TABLE devices (
    device_id         text PRIMARY KEY
                      CHECK (device_id ~ '^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$'),
    domain            text NOT NULL,
    kind              text NOT NULL,
    name              text NOT NULL,
    lat               double precision CHECK (lat BETWEEN -90 AND 90),
    lon               double precision CHECK (lon BETWEEN -180 AND 180),
    zone              text,            -- DMA, district or parking zone the device belongs to
    capacity          double precision CHECK (capacity >= 0),
    report_interval_s integer NOT NULL DEFAULT 300 CHECK (report_interval_s > 0),
    attributes        jsonb NOT NULL DEFAULT '{}'::jsonb,
    created_at        timestamptz NOT NULL DEFAULT now(),
    updated_at        timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX devices_domain_zone ON devices (domain, zone);

CREATE TABLE readings (
    device_id   text NOT NULL,
    metric      text NOT NULL,
    ts          timestamptz NOT NULL,          -- measurement (event) time, never invented
    value       double precision NOT NULL,     -- in the metric's canonical unit
    ingested_at timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (device_id, metric, ts)
);

CREATE TABLE quarantine (
    id               bigserial PRIMARY KEY,
    digest           bytea NOT NULL UNIQUE,    -- sha256(topic NUL payload): redeliveries fold
    topic            text NOT NULL,
    payload          bytea NOT NULL,           -- the raw bytes as received
    reason           text NOT NULL,            -- first rejection reason (contract Reason)
    detail           jsonb NOT NULL,           -- every rejection: [{reason, detail, index}]
    device_id        text,                     -- from the topic, when it could be read
    received_at      timestamptz NOT NULL,
    last_received_at timestamptz NOT NULL,
    occurrences      integer NOT NULL DEFAULT 1,
    stored_readings  integer NOT NULL DEFAULT 0, -- valid readings of the same message kept
    state            text NOT NULL DEFAULT 'pending'
                     CHECK (state IN ('pending', 'replayed', 'failed', 'discarded')),
    replay_attempts  integer NOT NULL DEFAULT 0,
    replayed_at      timestamptz
);
CREATE INDEX quarantine_state_reason ON quarantine (state, reason);
CREATE INDEX quarantine_device ON quarantine (device_id);
CREATE INDEX quarantine_received ON quarantine (received_at);
