-- Dead events, for the `waybill_dead_events` gauge and the admin lists:
-- counted without reading every event, as parked ones are.
CREATE INDEX events_dead ON events (seq) WHERE outcome->>'outcome' = 'dead';
