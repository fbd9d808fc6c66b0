-- Dispatch: what the state machine did with each event, and the shipments
-- it applies tracking events to. Pending events are the dispatched ones
-- without an outcome; any replica's dispatcher claims them with
-- FOR UPDATE SKIP LOCKED.
ALTER TABLE events
    ADD COLUMN outcome  JSONB,
    ADD COLUMN attempts INT NOT NULL DEFAULT 0;

CREATE INDEX events_pending ON events (seq) WHERE dispatch AND outcome IS NULL;

CREATE TABLE shipments (
    shipment_id     TEXT PRIMARY KEY,
    tracking_number TEXT UNIQUE,
    record          JSONB NOT NULL
);
