-- What the state machine did with an event, and whether it still waits
-- for it, leave the event's row: recording an outcome in that row wrote a
-- new version of it, body and all, with an entry in each of its indexes
-- (about 2.5 KB of WAL for a 1 KB event, more than storing it had cost).
-- An event's row is now written once, when it is stored.
--
-- `inbox` holds the events waiting for dispatch; any replica's dispatcher
-- claims its rows with FOR UPDATE SKIP LOCKED and deletes them in the
-- transaction that records their outcomes. `outcomes` holds the last
-- outcome of each dispatched (or redelivered) event, under the event's
-- sequence number.
CREATE TABLE inbox (
    seq            BIGINT PRIMARY KEY,
    received_at_ms BIGINT NOT NULL
);

CREATE TABLE outcomes (
    seq    BIGINT PRIMARY KEY,
    record JSONB NOT NULL
);

INSERT INTO inbox (seq, received_at_ms)
    SELECT seq, received_at_ms FROM events WHERE dispatch AND outcome IS NULL;
INSERT INTO outcomes (seq, record)
    SELECT seq, outcome FROM events WHERE outcome IS NOT NULL;

DROP INDEX events_pending, events_parked, events_parked_tracking,
    events_parked_order, events_dead;
ALTER TABLE events DROP COLUMN outcome, DROP COLUMN attempts;

-- Parked and dead events, for the gauges and the admin lists; parked
-- events of one tracking number or order are found through the events'
-- own indexes on those columns.
CREATE INDEX outcomes_parked ON outcomes (seq) WHERE record->>'outcome' = 'parked';
CREATE INDEX outcomes_dead ON outcomes (seq) WHERE record->>'outcome' = 'dead';

-- A body is stored packed (`store::packed`: an lz4 block, its size first)
-- when that makes it smaller.
ALTER TABLE events ADD COLUMN body_lz4 BOOLEAN NOT NULL DEFAULT false;

-- One index serves both the identity and the search by event id alone.
CREATE UNIQUE INDEX events_identity ON events (event_id, source);
ALTER TABLE events DROP CONSTRAINT events_source_event_id_key;
DROP INDEX events_event_id;

-- Renamed so that a build from before this migration, which would store
-- events without queueing them in `inbox`, fails its intake (503, and the
-- sender retries on another replica) rather than storing events that no
-- dispatcher would ever take.
ALTER TABLE events RENAME COLUMN dispatch TO queued;
