-- Accepted webhook events: one row per (source, event_id) identity. The
-- unique key is what deduplicates across replicas; a copy that arrives
-- after the stored one's retention replaces it with a new sequence.
CREATE TABLE events (
    seq             BIGSERIAL PRIMARY KEY,
    source          TEXT NOT NULL,
    event_id        TEXT NOT NULL,
    received_at_ms  BIGINT NOT NULL,
    expires_at_ms   BIGINT NOT NULL,
    content_hash    BYTEA NOT NULL,
    dispatch        BOOLEAN NOT NULL,
    event_type      TEXT,
    tracking_number TEXT,
    order_id        TEXT,
    headers         JSONB NOT NULL,
    fields          JSONB,
    body            BYTEA NOT NULL,
    UNIQUE (source, event_id)
);

CREATE INDEX events_expiry ON events (expires_at_ms);
CREATE INDEX events_tracking ON events (tracking_number, seq) WHERE tracking_number IS NOT NULL;
CREATE INDEX events_order ON events (order_id, seq) WHERE order_id IS NOT NULL;
