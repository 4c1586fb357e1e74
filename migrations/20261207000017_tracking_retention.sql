-- How long tracking events (and what became of suspended items) are kept: one group-wide
-- setting in whole days (`mbx group set --tracking-retention 30d`), 7 by default.
ALTER TABLE mbx_group ADD COLUMN tracking_retention_days integer NOT NULL DEFAULT 7
    CHECK (tracking_retention_days BETWEEN 1 AND 3650);
