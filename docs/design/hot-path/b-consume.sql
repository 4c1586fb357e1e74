-- Design B consume: claim (relaxed commit, HOT update) then complete (synchronous
-- commit: delete, one tracking_batches row per batch).
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
WITH done AS (
    DELETE FROM b_messages m USING unnest(:ids::int8[], :toks::uuid[]) AS c(id, token)
     WHERE m.id = c.id AND m.claim_token = c.token AND m.claimed_by = :inst
    RETURNING m.uid, m.port_id),
 ev AS (INSERT INTO tracking_batches (event, port_id, instance_id, message_ids)
        SELECT 'delivered', :port, :inst, array_agg(uid) FROM done HAVING count(*) > 0)
SELECT count(*) AS completed FROM done \gset
\else
WITH done AS (
    DELETE FROM b_deliveries d USING unnest(:ids::int8[], :toks::uuid[]) AS c(id, token)
     WHERE d.id = c.id AND d.claim_token = c.token AND d.claimed_by = :inst
    RETURNING d.id, d.message_id),
 gone AS (
    DELETE FROM b_messages m WHERE m.id IN (SELECT message_id FROM done)
       AND NOT EXISTS (SELECT 1 FROM b_deliveries x
                        WHERE x.message_id = m.id AND x.id NOT IN (SELECT id FROM done))
    RETURNING m.id),
 ev AS (INSERT INTO tracking_batches (event, port_id, instance_id, message_ids)
        SELECT 'delivered', :port, :inst, array_agg(m.uid) FROM done JOIN b_messages m ON m.id = done.message_id
        HAVING count(*) > 0)
SELECT count(*) AS completed FROM done \gset
\endif
UPDATE proto_count SET del = del + :completed WHERE client = :client_id;
COMMIT;
\endif
