-- Ordered orchestrations (`mbx orchestration create --ordered [--buckets N]`): each
-- instance of an ordered orchestration belongs to the bucket of its convoy's key, and a
-- host instance runs the instances of a bucket only while it holds that bucket's lease,
-- as the buckets of a port ordered by a property are held. A step commits only under
-- the lease at the epoch its claim was taken at: an owner paused past its lease cannot
-- commit once another has taken the bucket.
ALTER TABLE leases ADD COLUMN orchestration_id bigint REFERENCES orchestrations (id) ON DELETE CASCADE;
ALTER TABLE leases DROP CONSTRAINT leases_check;
ALTER TABLE leases ADD CONSTRAINT leases_one_owner
    CHECK (num_nonnulls(port_id, location_id, orchestration_id) = 1);
ALTER TABLE leases ADD CONSTRAINT leases_orchestration_bucket UNIQUE (orchestration_id, bucket);

ALTER TABLE orchestration_instances ADD COLUMN bucket integer;
ALTER TABLE orchestration_instances ADD COLUMN claim_epoch bigint;
-- the live instances of a bucket: what a lease is taken for and what its holder claims
CREATE INDEX orchestration_instances_bucket ON orchestration_instances (orchestration_id, bucket)
    WHERE bucket IS NOT NULL AND state IN ('pending', 'running', 'waiting');
