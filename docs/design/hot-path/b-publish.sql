-- Design B publish: messages routed to one port (:inline = 1: one subscriber, or spread)
-- carry their delivery (one row); others
-- get one b_deliveries row per port. Same closed loop as design A.
SELECT (coalesce(sum(pub) - sum(del), 0) < :window)::int AS go FROM proto_count \gset
\if :go
BEGIN;
\if :inline
INSERT INTO b_messages (uid, port_id, content_type, body_size, context, publisher_host_id, body)
SELECT gen_random_uuid(), CASE WHEN :spread = 1 THEN nextval('proto_spread') % :nsubs + 1 ELSE 1 END,
       'application/octet-stream', 1024, proto_context(), 1, proto_body()
  FROM generate_series(1, :batch);
\else
WITH m AS (
    INSERT INTO b_messages (uid, port_id, content_type, body_size, context, publisher_host_id, body)
    SELECT gen_random_uuid(), NULL, 'application/octet-stream', 1024, proto_context(), 1, proto_body()
      FROM generate_series(1, :batch)
    RETURNING id)
SELECT array_agg(id) AS ids FROM m \gset
INSERT INTO b_deliveries (message_id, port_id, body_size)
SELECT t.m, p.id, 1024 FROM unnest(:ids::int8[]) AS t(m) CROSS JOIN send_ports p;
\endif
UPDATE proto_count SET pub = pub + :perpub WHERE client = :client_id;
COMMIT;
\endif
