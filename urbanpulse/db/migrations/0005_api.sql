-- The HTTP API: who may call it (hashed tokens with a role), what they changed (the audit log),
-- the alert activity feed behind the live event stream, and assignment of alerts.

CREATE TABLE api_tokens (
    id           bigserial PRIMARY KEY,
    name         text NOT NULL UNIQUE CHECK (name ~ '^[A-Za-z0-9][A-Za-z0-9._@-]{0,63}$'),
    role         text NOT NULL CHECK (role IN ('viewer', 'operator', 'admin')),
    department   text,                     -- 牵头单位 the holder works for (NULL: every one)
    token_hash   bytea NOT NULL UNIQUE,    -- sha256 of the secret; the secret is never stored
    created_at   timestamptz NOT NULL DEFAULT now(),
    expires_at   timestamptz,
    revoked_at   timestamptz,
    last_used_at timestamptz
);

-- Every state-changing call: who (token name, or the department of a signed link), when, what.
CREATE TABLE audit_log (
    id      bigserial PRIMARY KEY,
    at      timestamptz NOT NULL DEFAULT now(),
    actor   text NOT NULL,
    role    text NOT NULL,
    action  text NOT NULL,                 -- e.g. alert.acknowledge, device.create
    target  text NOT NULL,                 -- e.g. alert:42, device:YC-AQ-001
    detail  jsonb NOT NULL DEFAULT '{}'::jsonb,
    client  text                           -- the caller's address
);
CREATE INDEX audit_log_at ON audit_log (at);
CREATE INDEX audit_log_target ON audit_log (target);

ALTER TABLE alerts ADD COLUMN assignee text;
ALTER TABLE alerts ADD COLUMN assigned_at timestamptz;
CREATE INDEX alerts_owner ON alerts (owner, status);
CREATE INDEX alerts_opened ON alerts (opened_at);

-- What happened to alerts, in the order it was recorded: lifecycle transitions (copied here by
-- a trigger, whoever wrote them) and people's actions (acknowledge, assign, comment, resolve).
-- Its id is the event stream's event id, so a client that reconnects misses nothing.
CREATE TABLE alert_feed (
    id       bigserial PRIMARY KEY,
    alert_id bigint NOT NULL REFERENCES alerts (id) ON DELETE CASCADE,
    kind     text NOT NULL,                -- pending, firing, resolved, cancelled, acknowledged,
                                           -- assigned, commented
    at       timestamptz NOT NULL,         -- when it happened (measurement time for transitions)
    actor    text,                         -- NULL: the rule engine
    detail   jsonb NOT NULL DEFAULT '{}'::jsonb,
    created_at timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX alert_feed_alert ON alert_feed (alert_id);

CREATE FUNCTION alert_feed_from_event() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    -- actor: whoever the writing transaction says it acts for (the API, resolving by hand)
    INSERT INTO alert_feed (alert_id, kind, at, actor, detail)
    VALUES (NEW.alert_id,
            CASE NEW.to_status WHEN 'inactive' THEN 'cancelled' ELSE NEW.to_status END, NEW.at,
            nullif(current_setting('urbanpulse.actor', true), ''),
            jsonb_build_object('from', NEW.from_status, 'value', NEW.value, 'note', NEW.note));
    RETURN NULL;
END $$;
CREATE TRIGGER alert_events_feed AFTER INSERT ON alert_events
    FOR EACH ROW EXECUTE FUNCTION alert_feed_from_event();

-- Secrets the services share without configuration (e.g. the key signing acknowledgement
-- links), created once by whichever service needs one first.
CREATE TABLE app_secrets (
    name       text PRIMARY KEY,
    value      bytea NOT NULL,
    created_at timestamptz NOT NULL DEFAULT now()
);

-- Alerts recorded before this migration keep their history in the feed.
INSERT INTO alert_feed (alert_id, kind, at, detail, created_at)
SELECT alert_id, CASE to_status WHEN 'inactive' THEN 'cancelled' ELSE to_status END, at,
       jsonb_build_object('from', from_status, 'value', value, 'note', note), recorded_at
  FROM alert_events ORDER BY id;

-- Wake the API's event streams; the payload is only a hint, they read the feed by id.
CREATE FUNCTION alert_feed_notify() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    PERFORM pg_notify('urbanpulse_alert_feed', NEW.id::text);
    RETURN NULL;
END $$;
CREATE TRIGGER alert_feed_wake AFTER INSERT ON alert_feed
    FOR EACH ROW EXECUTE FUNCTION alert_feed_notify();
