-- Throttling on the size of the MessageBox database (pg_database_size): receive slows
-- down before the disk fills. A group-wide threshold in the group row (NULL: off) and a
-- per-host override (NULL: the group's threshold; 0: off for that host), in bytes.
ALTER TABLE mbx_group ADD COLUMN throttle_database_size bigint
    CHECK (throttle_database_size > 0);
ALTER TABLE hosts ADD COLUMN throttle_database_size bigint
    CHECK (throttle_database_size >= 0);

-- An instance may now be throttled on the database's size too ('database-size'): any of
-- the kinds, comma-separated.
ALTER TABLE host_instances DROP CONSTRAINT host_instances_throttle_check;
ALTER TABLE host_instances ADD CONSTRAINT host_instances_throttle_check
    CHECK (throttle ~ '^(publish|database-size|inflight)(,(publish|database-size|inflight))*$');
