-- Alert delivery: an outbox written in the same transaction as each alert transition worth
-- telling someone about, silences, the notifications planned from them (one per channel, with
-- an idempotency key) and every delivery attempt.

CREATE TABLE notify_outbox (
    id           bigserial PRIMARY KEY,
    alert_id     bigint NOT NULL REFERENCES alerts (id) ON DELETE CASCADE,
    kind         text NOT NULL CHECK (kind IN ('firing', 'resolved')),
    at           timestamptz NOT NULL,       -- measurement time of the transition
    value        double precision,
    created_at   timestamptz NOT NULL DEFAULT now(),
    processed_at timestamptz,                -- planned into notifications (or silenced)
    UNIQUE (alert_id, kind, at)
);
CREATE INDEX notify_outbox_pending ON notify_outbox (created_at) WHERE processed_at IS NULL;

-- Silences and maintenance windows: matching alerts still fire and are recorded, they just
-- do not notify. Every key of `matchers` must match: rule_id, entity, zone, owner, severity,
-- or labels.<name>.
CREATE TABLE silences (
    id         bigserial PRIMARY KEY,
    matchers   jsonb NOT NULL CHECK (jsonb_typeof(matchers) = 'object' AND matchers <> '{}'),
    starts_at  timestamptz NOT NULL,
    ends_at    timestamptz NOT NULL CHECK (ends_at > starts_at),
    author     text NOT NULL,
    reason     text NOT NULL,
    created_at timestamptz NOT NULL DEFAULT now(),
    expired_at timestamptz                   -- ended early by someone
);
CREATE INDEX silences_active ON silences (ends_at) WHERE expired_at IS NULL;

-- Where each firing alert stands in its department's escalation.
CREATE TABLE alert_notify_state (
    alert_id       bigint PRIMARY KEY REFERENCES alerts (id) ON DELETE CASCADE,
    department     text NOT NULL,
    level          integer NOT NULL DEFAULT 0,  -- the last escalation level notified
    notified_at    timestamptz,
    escalate_at    timestamptz,                 -- NULL: no further level, or acknowledged
    silenced_by    bigint REFERENCES silences (id) ON DELETE SET NULL
);
CREATE INDEX alert_notify_state_due ON alert_notify_state (escalate_at)
    WHERE escalate_at IS NOT NULL;

CREATE TABLE notifications (
    id              bigserial PRIMARY KEY,
    idempotency_key text NOT NULL UNIQUE,       -- the same message is never planned twice
    department      text NOT NULL,
    level           integer NOT NULL DEFAULT 0,
    channel         text NOT NULL,              -- a channel name of the notify config
    kind            text NOT NULL CHECK (kind IN ('firing', 'resolved', 'escalation', 'digest')),
    alert_ids       bigint[] NOT NULL DEFAULT '{}',
    title           text NOT NULL,
    body            text NOT NULL,
    attachment_name text,                       -- e.g. the digest's chart (PNG)
    attachment      bytea,
    state           text NOT NULL DEFAULT 'pending'
                    CHECK (state IN ('pending', 'sending', 'sent', 'dead')),
    attempts        integer NOT NULL DEFAULT 0,
    next_attempt_at timestamptz NOT NULL DEFAULT now(),
    claimed_until   timestamptz,                -- a notifier is sending it until then
    last_error      text,
    created_at      timestamptz NOT NULL DEFAULT now(),
    sent_at         timestamptz
);
CREATE INDEX notifications_due ON notifications (next_attempt_at)
    WHERE state IN ('pending', 'sending');
CREATE INDEX notifications_created ON notifications (created_at);

CREATE TABLE notification_attempts (
    id              bigserial PRIMARY KEY,
    notification_id bigint NOT NULL REFERENCES notifications (id) ON DELETE CASCADE,
    at              timestamptz NOT NULL DEFAULT now(),
    ok              boolean NOT NULL,
    error           text,
    duration_ms     double precision NOT NULL
);
CREATE INDEX notification_attempts_notification ON notification_attempts (notification_id);
