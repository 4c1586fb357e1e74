-- Design A failure: claim as a-consume.sql, then every claimed delivery fails and is
-- scheduled for retry at once (delivery.rs deliveries_fail, Retry: the row goes back to
-- 'ready' -- a non-HOT update -- with its error appended, and at the default tracking
-- level 'published' (first failure only), 'attempt-failed' and 'retry-scheduled' rows).
SELECT nextval('proto_rr') % :nsubs + 1 AS port \gset
BEGIN;
SET LOCAL synchronous_commit = off;
WITH cand AS (
    SELECT d.id, d.body_size, d.priority FROM deliveries d
     WHERE d.port_id = :port AND d.state = 'ready' AND d.not_before <= now()
       AND d.seq IS NULL
       AND EXISTS (SELECT 1 FROM send_ports p WHERE p.id = :port AND p.state = 'started')
       AND EXISTS (SELECT 1 FROM host_instances i WHERE i.id = :inst AND i.state = 'alive')
       AND (d.via_port OR EXISTS (SELECT 1 FROM send_port_groups g
                                   WHERE g.id = ANY (d.via_groups) AND g.state = 'started'))
     ORDER BY d.priority DESC, d.id
     LIMIT :batch
     FOR UPDATE OF d SKIP LOCKED),
 capped AS (
    SELECT id FROM (SELECT id, sum(body_size) OVER (ORDER BY priority DESC, id) AS upto,
                           row_number() OVER (ORDER BY priority DESC, id) AS n
                      FROM cand) c
     WHERE upto <= 67108864 OR n = 1),
 claimed AS (
    UPDATE deliveries d SET state = 'claimed', claimed_by = :inst, claim_token = gen_random_uuid(), claimed_at = now()
      FROM capped WHERE d.id = capped.id
    RETURNING d.id, d.message_id, d.port_id, d.transport, d.retries, d.seq, d.priority, d.claim_token),
 ev AS (
    INSERT INTO tracking_events (message_id, event, port_id, instance_id)
    SELECT c.message_id, 'claimed', c.port_id, :inst FROM claimed c
      JOIN send_ports p ON p.id = c.port_id JOIN hosts h ON h.id = p.host_id
     WHERE coalesce(p.tracking, h.tracking) = 'all'),
 got AS (
    SELECT c.id, c.claim_token, m.body, m.context, p.name
      FROM claimed c JOIN messages m ON m.id = c.message_id JOIN send_ports p ON p.id = c.port_id)
SELECT count(*) AS n, coalesce(array_agg(id), '{}') AS ids, coalesce(array_agg(claim_token), '{}') AS toks,
       coalesce(sum(length(body) + length(context::text)), 0) AS bytes
  FROM got \gset
COMMIT;
\if :n > 0
BEGIN;
SELECT count(*) AS locked FROM (
    SELECT d.id FROM deliveries d JOIN send_ports p ON p.id = d.port_id
      JOIN unnest(:ids::int8[], :toks::uuid[]) AS c(id, token) ON c.id = d.id AND c.token = d.claim_token
     WHERE d.claimed_by = :inst ORDER BY d.id FOR UPDATE OF d) x \gset
WITH u AS (
    UPDATE deliveries d
       SET state = 'ready', claimed_by = NULL, claim_token = NULL, claimed_at = NULL,
           retries = d.retries + 1, not_before = now(),
           errors = d.errors || jsonb_build_array(jsonb_build_object(
               'at', now(), 'transport', d.transport, 'attempt', d.retries + 1,
               'instance', :inst::uuid, 'error', 'connection refused'))
      FROM unnest(:ids::int8[]) AS c(id)
     WHERE d.id = c.id
    RETURNING d.id, d.message_id, d.port_id, d.transport, d.not_before, jsonb_array_length(d.errors) AS n)
INSERT INTO tracking_events (message_id, event, port_id, instance_id, detail)
SELECT u.message_id, 'published', u.port_id, NULL::uuid, 'routed to ' || p.name
  FROM u JOIN send_ports p ON p.id = u.port_id JOIN hosts h ON h.id = p.host_id
 WHERE u.n = 1 AND coalesce(p.tracking, h.tracking) = 'failures'
UNION ALL
SELECT u.message_id, 'attempt-failed', u.port_id, :inst::uuid, 'connection refused'
  FROM u JOIN send_ports p ON p.id = u.port_id JOIN hosts h ON h.id = p.host_id
 WHERE coalesce(p.tracking, h.tracking) <> 'off'
UNION ALL
SELECT u.message_id, 'retry-scheduled', u.port_id, :inst::uuid, u.transport || ' transport at ' || u.not_before
  FROM u JOIN send_ports p ON p.id = u.port_id JOIN hosts h ON h.id = p.host_id
 WHERE coalesce(p.tracking, h.tracking) <> 'off';
UPDATE proto_count SET del = del + :n WHERE client = :client_id;
COMMIT;
\endif
