-- Ordered delivery (SPEC §5.3): a claim on an ordered port records the lease epoch it was
-- made under; completions and failures of ordered deliveries check the lease (holder and
-- epoch, not expired) in the same statement (fencing).
ALTER TABLE deliveries ADD COLUMN claim_epoch bigint;
-- the ordered claim reads a port's deliveries in sequence order
CREATE INDEX deliveries_ordered_head ON deliveries (port_id, seq) WHERE seq IS NOT NULL;
-- the endpoint position committed with an ordered port's last completion (FILE append:
-- the file's length); a new owner restores the endpoint to it before sending
ALTER TABLE leases ADD COLUMN checkpoint text;
