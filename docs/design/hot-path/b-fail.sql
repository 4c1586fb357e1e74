-- Design B failure: claim as b-consume.sql, then every claimed delivery fails and is
-- scheduled for retry at once: its claim columns, retries and not_before are reset in one
-- HOT update (no index covers them); one tracking_batches row records the batch's failure
-- with the error.
SELECT nextval('proto_rr') % :nsubs + 1 AS port \gset
BEGIN;
SET LOCAL synchronous_commit = off;
\if :inline
WITH cand AS (
    SELECT m.id FROM b_messages m
     WHERE m.port_id = :port AND m.claim_token IS NULL AND m.not_before <= now()
       AND EXISTS (SELECT 1 FROM send_ports p WHERE p.id = :port AND p.state = 'started')
       AND EXISTS (SELECT 1 FROM host_instances i WHERE i.id = :inst AND i.state = 'alive')
     ORDER BY m.id LIMIT :batch
     FOR UPDATE OF m SKIP LOCKED),
 claimed AS (
    UPDATE b_messages m SET claimed_by = :inst, claim_token = gen_random_uuid(), claimed_at = now()
      FROM cand WHERE m.id = cand.id
    RETURNING m.id, m.uid, m.claim_token, m.body, m.context)
SELECT count(*) AS n, coalesce(array_agg(id), '{}') AS ids, coalesce(array_agg(claim_token), '{}') AS toks,
       coalesce(sum(length(body) + length(context::text)), 0) AS bytes
  FROM claimed \gset
\else
WITH cand AS (
    SELECT d.id FROM b_deliveries d
     WHERE d.port_id = :port AND d.claim_token IS NULL AND d.not_before <= now()
       AND EXISTS (SELECT 1 FROM send_ports p WHERE p.id = :port AND p.state = 'started')
       AND EXISTS (SELECT 1 FROM host_instances i WHERE i.id = :inst AND i.state = 'alive')
     ORDER BY d.priority DESC, d.id LIMIT :batch
     FOR UPDATE OF d SKIP LOCKED),
 claimed AS (
    UPDATE b_deliveries d SET claimed_by = :inst, claim_token = gen_random_uuid(), claimed_at = now()
      FROM cand WHERE d.id = cand.id
    RETURNING d.id, d.message_id, d.claim_token),
 got AS (SELECT c.id, c.claim_token, m.body, m.context FROM claimed c JOIN b_messages m ON m.id = c.message_id)
SELECT count(*) AS n, coalesce(array_agg(id), '{}') AS ids, coalesce(array_agg(claim_token), '{}') AS toks,
       coalesce(sum(length(body) + length(context::text)), 0) AS bytes
  FROM got \gset
\endif
COMMIT;
\if :n > 0
BEGIN;
\if :inline
WITH u AS (
    UPDATE b_messages m SET claimed_by = NULL, claim_token = NULL, claimed_at = NULL,
           retries = m.retries + 1, not_before = now()
      FROM unnest(:ids::int8[], :toks::uuid[]) AS c(id, token)
     WHERE m.id = c.id AND m.claim_token = c.token AND m.claimed_by = :inst
    RETURNING m.uid)
INSERT INTO tracking_batches (event, port_id, instance_id, message_ids)
SELECT 'attempt-failed: connection refused', :port, :inst, array_agg(uid) FROM u HAVING count(*) > 0;
\else
WITH u AS (
    UPDATE b_deliveries d SET claimed_by = NULL, claim_token = NULL, claimed_at = NULL,
           retries = d.retries + 1, not_before = now(),
           errors = d.errors || jsonb_build_array(jsonb_build_object('at', now(), 'attempt', d.retries + 1,
                                                                     'error', 'connection refused'))
      FROM unnest(:ids::int8[], :toks::uuid[]) AS c(id, token)
     WHERE d.id = c.id AND d.claim_token = c.token AND d.claimed_by = :inst
    RETURNING d.message_id)
INSERT INTO tracking_batches (event, port_id, instance_id, message_ids)
SELECT 'attempt-failed: connection refused', :port, :inst, array_agg(m.uid)
  FROM u JOIN b_messages m ON m.id = u.message_id HAVING count(*) > 0;
\endif
UPDATE proto_count SET del = del + :n WHERE client = :client_id;
COMMIT;
\endif
