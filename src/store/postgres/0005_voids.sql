-- Shipments whose cancel owes a label void: the carrier may hold a label
-- sold behind a lost answer, or one a cancel could not void at once. A
-- process that takes one leases it (claimed_until_ms); when it dies, the
-- lease runs out and another takes it.
CREATE TABLE label_voids (
    shipment_id      TEXT PRIMARY KEY,
    due_ms           BIGINT NOT NULL,
    claimed_until_ms BIGINT NOT NULL DEFAULT 0
);

CREATE INDEX label_voids_due ON label_voids (due_ms);
