-- Per-key ordering (`send-port create --ordered-by PROP [--ordered-buckets N]`): order is
-- kept per value of a promoted property, concurrently across values. A delivery's
-- `order_key` is that value's text and its `seq` the key's own sequence (one
-- `ordered_sequences` row per port and key); `bucket` is the key's hash bucket, computed
-- at publish (0 on a port ordered as a whole). A lease row per bucket (port_id, bucket):
-- a bucket is only a unit of ownership, spread over the instances and failed over one by
-- one; fencing checks the lease of the delivery's own bucket.
ALTER TABLE send_ports ADD COLUMN ordered_by text;
ALTER TABLE send_ports ADD COLUMN ordered_buckets integer;
ALTER TABLE send_ports ADD CONSTRAINT send_ports_ordered_by
    CHECK ((ordered_by IS NULL) = (ordered_buckets IS NULL)
           AND (ordered_by IS NULL OR (ordered AND ordered_buckets BETWEEN 1 AND 1024)));

ALTER TABLE deliveries ADD COLUMN bucket integer NOT NULL DEFAULT 0;
-- the keyed claim reads a port's held buckets oldest first
CREATE INDEX deliveries_keyed_age ON deliveries (port_id, id) WHERE seq IS NOT NULL;

-- A key held after a failure on a `--stop-on-failure` port ordered by a property: its head
-- stays in place and nothing of that key is sent until `send-port resume|skip NAME --key`;
-- every other key goes on.
CREATE TABLE ordered_holds (
    port_id   bigint NOT NULL REFERENCES send_ports (id) ON DELETE CASCADE,
    order_key text NOT NULL,
    held_at   timestamptz NOT NULL DEFAULT now(),
    error     text,
    PRIMARY KEY (port_id, order_key)
);
