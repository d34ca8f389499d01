-- Derived series written by recording rules (AQI, water balance, night flow, occupancy), the
-- ponding events of each flood point, and the plan KPI scorecard's history. Kept apart from
-- `readings` (whose rows are measurements, never computed) but shaped like it, so Grafana and
-- alerting rules read them the same way.

CREATE TABLE recorded (
    series       text NOT NULL,             -- the recording rule's id, e.g. air.aqi_hourly
    entity       text NOT NULL,             -- station, DMA, district, car park, parking zone
    period_start timestamptz NOT NULL,      -- the period the value is about: [start, end)
    period_end   timestamptz NOT NULL,      -- when the value became known (alerts use this)
    value        double precision NOT NULL,
    detail       jsonb NOT NULL DEFAULT '{}'::jsonb, -- e.g. IAQI per pollutant, category, colour
    computed_at  timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (series, entity, period_start),
    CHECK (period_end > period_start)
);
CREATE INDEX recorded_series_end ON recorded (series, period_end);

-- One row per ponding event at a flood point: depth at or above the threshold from started_at
-- until ended_at (NULL while it lasts).
CREATE TABLE ponding_events (
    device_id    text NOT NULL,
    started_at   timestamptz NOT NULL,      -- first reading at or above the threshold
    ended_at     timestamptz,               -- first reading back below it (NULL: ongoing)
    last_at      timestamptz NOT NULL,      -- last reading of the event so far
    peak_cm      double precision NOT NULL,
    peak_at      timestamptz NOT NULL,
    threshold_cm double precision NOT NULL,
    zone         text,
    carriageway  boolean NOT NULL DEFAULT false,
    PRIMARY KEY (device_id, started_at)
);
CREATE INDEX ponding_events_started ON ponding_events (started_at);

-- The plan KPI scorecard: each KPI's value per period, against its target.
CREATE TABLE kpi_values (
    kpi_id       text NOT NULL,             -- e.g. water.leakage_month
    entity       text NOT NULL,             -- DMA, district, station, car park or 全区
    period       text NOT NULL CHECK (period IN ('day', 'month', 'year')),
    period_start date NOT NULL,             -- local calendar date the period begins
    value        double precision,
    target       double precision,          -- NULL: the plan sets a direction, not a number
    compliant    boolean,                   -- NULL: not enough data to judge
    detail       jsonb NOT NULL DEFAULT '{}'::jsonb,
    computed_at  timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (kpi_id, entity, period, period_start)
);
