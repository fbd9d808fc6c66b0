-- Orders, idempotency keys and the fulfilment queue, and the indexes that
-- dispatch, unparking and the gauges read.
CREATE TABLE orders (
    partner       TEXT NOT NULL,
    order_id      TEXT NOT NULL,
    created_at_ms BIGINT NOT NULL,
    record        JSONB NOT NULL,
    PRIMARY KEY (partner, order_id)
);

-- Payment events name an order id, whatever the partner.
CREATE INDEX orders_by_id ON orders (order_id);
CREATE INDEX orders_listed ON orders (partner, created_at_ms DESC, order_id DESC);

-- Orders waiting for background fulfilment. A process that takes one
-- leases it (claimed_until_ms); when it dies, the lease runs out and
-- another takes it.
CREATE TABLE fulfilments (
    partner          TEXT NOT NULL,
    order_id         TEXT NOT NULL,
    due_ms           BIGINT NOT NULL,
    claimed_until_ms BIGINT NOT NULL DEFAULT 0,
    PRIMARY KEY (partner, order_id)
);

CREATE INDEX fulfilments_due ON fulfilments (due_ms);

-- One row per idempotency key: a claim (with its lease) or the final
-- answer, which is written in the transaction of the effect.
CREATE TABLE idempotency_keys (
    partner       TEXT NOT NULL,
    key           TEXT NOT NULL,
    record        JSONB NOT NULL,
    expires_at_ms BIGINT,
    PRIMARY KEY (partner, key)
);

CREATE INDEX idempotency_expiry ON idempotency_keys (expires_at_ms)
    WHERE expires_at_ms IS NOT NULL;

CREATE INDEX events_parked ON events (seq) WHERE outcome->>'outcome' = 'parked';
CREATE INDEX events_parked_tracking ON events (tracking_number)
    WHERE outcome->>'outcome' = 'parked';
CREATE INDEX events_parked_order ON events (order_id)
    WHERE outcome->>'outcome' = 'parked';

-- The admin search by event id alone.
CREATE INDEX events_event_id ON events (event_id);
