-- Alerts: the evaluator's state per (rule, entity), the alerts it opened, every transition,
-- and the human side (acknowledgement, assignee, comments) kept apart from evaluation.

-- What the evaluator knows about one entity of one rule (its `for` timer, flapping memory),
-- so that a restarted runner carries on where it stopped.
CREATE TABLE rule_states (
    rule_id    text NOT NULL,
    entity     text NOT NULL,          -- device id, DMA zone, station, car park, district …
    state      jsonb NOT NULL,         -- rules.lifecycle.State
    alert_id   bigint,                 -- the open alert of this entity, if any
    updated_at timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (rule_id, entity)
);

CREATE TABLE alerts (
    id          bigserial PRIMARY KEY,
    rule_id     text NOT NULL,
    entity      text NOT NULL,
    status      text NOT NULL
                CHECK (status IN ('pending', 'firing', 'resolved', 'cancelled')),
    severity    text NOT NULL,
    owner       text NOT NULL,         -- 牵头单位: the department the alert goes to
    labels      jsonb NOT NULL DEFAULT '{}'::jsonb,
    value       double precision,      -- the latest value that breached
    pending_at  timestamptz NOT NULL,  -- measurement time the breach began
    started_at  timestamptz,           -- firing: measurement time the breach began
    ended_at    timestamptz,           -- resolved: measurement time the clear began
    flapping    boolean NOT NULL DEFAULT false,
    opened_at   timestamptz NOT NULL DEFAULT now(),
    updated_at  timestamptz NOT NULL DEFAULT now()
);
-- One open alert per (rule, entity), whatever number of runners evaluate at the same time.
CREATE UNIQUE INDEX alerts_one_open ON alerts (rule_id, entity)
    WHERE status IN ('pending', 'firing');
CREATE INDEX alerts_status ON alerts (status, rule_id);
CREATE INDEX alerts_started ON alerts (started_at);

CREATE TABLE alert_events (
    id          bigserial PRIMARY KEY,
    alert_id    bigint NOT NULL REFERENCES alerts (id) ON DELETE CASCADE,
    from_status text NOT NULL,
    to_status   text NOT NULL,
    at          timestamptz NOT NULL,  -- measurement time the transition is dated to
    value       double precision,
    note        text NOT NULL DEFAULT '',
    recorded_at timestamptz NOT NULL DEFAULT now(),
    UNIQUE (alert_id, to_status, at)   -- a transition recorded twice is recorded once
);

CREATE TABLE alert_acks (
    alert_id  bigint PRIMARY KEY REFERENCES alerts (id) ON DELETE CASCADE,
    acked_by  text NOT NULL,
    acked_at  timestamptz NOT NULL DEFAULT now(),
    assignee  text,
    note      text NOT NULL DEFAULT ''
);

CREATE TABLE alert_comments (
    id         bigserial PRIMARY KEY,
    alert_id   bigint NOT NULL REFERENCES alerts (id) ON DELETE CASCADE,
    author     text NOT NULL,
    body       text NOT NULL,
    created_at timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX alert_comments_alert ON alert_comments (alert_id);

-- Each rule's health as the runner last saw it, and how far it has evaluated: entities with
-- nothing going on have no row in rule_states and start from the watermark.
CREATE TABLE rule_health (
    rule_id          text PRIMARY KEY,
    watermark        timestamptz,      -- measurement time evaluated up to (entities at rest)
    last_eval_at     timestamptz,
    last_duration_ms double precision,
    last_ok_at       timestamptz,
    last_error       text,
    last_error_at    timestamptz,
    evaluations      bigint NOT NULL DEFAULT 0,
    failures         bigint NOT NULL DEFAULT 0
);
