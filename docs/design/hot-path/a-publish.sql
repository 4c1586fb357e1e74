-- Design A publish: one transaction per batch of :batch messages (publish.rs steps 1 and 4:
-- insert the messages, then their deliveries with the tracking insert in the same
-- statement). Routing is done here in SQL (every port, or one port round-robin when
-- :spread = 1; the subquery refers to t.m so that it runs per message); mbx routes in
-- memory and passes the same arrays.
-- Closed loop: nothing is published while :window deliveries wait.
SELECT (coalesce(sum(pub) - sum(del), 0) < :window)::int AS go FROM proto_count \gset
\if :go
BEGIN;
WITH m AS (
    INSERT INTO messages (id, content_type, body, body_size, chunked, context, publisher_host_id, receive_location_id)
    SELECT gen_random_uuid(), 'application/octet-stream', proto_body(), 1024, false, proto_context(), 1, NULL
      FROM generate_series(1, :batch)
    RETURNING id)
SELECT array_agg(id) AS ids FROM m \gset
WITH d AS (
    INSERT INTO deliveries (message_id, port_id, via_port, via_groups, seq, order_key, body_size, bucket)
    SELECT t.m, r.port, true, '{}', NULL, NULL, 1024, 0
      FROM unnest(:ids::uuid[]) AS t(m)
      CROSS JOIN LATERAL (SELECT p.id AS port FROM send_ports p WHERE :spread = 0
                          UNION ALL SELECT nextval('proto_spread') % :nsubs + 1 WHERE :spread = 1 AND t.m IS NOT NULL) r
    RETURNING message_id, port_id)
INSERT INTO tracking_events (message_id, event, port_id, detail)
SELECT d.message_id, 'published', d.port_id, 'routed to ' || p.name
  FROM d JOIN send_ports p ON p.id = d.port_id JOIN hosts h ON h.id = p.host_id
 WHERE coalesce(p.tracking, h.tracking) = 'all';
UPDATE proto_count SET pub = pub + :perpub WHERE client = :client_id;
COMMIT;
\endif
