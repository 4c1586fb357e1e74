-- Design C retry: claim due c_retry rows of one subscriber (HOT update of the claim
-- columns), then complete them (delete, one tracking_batches row). Only failed
-- deliveries ever get here.
SELECT nextval('proto_rr') % :nsubs + 1 AS sub \gset
BEGIN;
SET LOCAL synchronous_commit = off;
WITH cand AS (
    SELECT r.id FROM c_retry r
     WHERE r.sub = :sub AND r.not_before <= now() AND r.claim_token IS NULL
     ORDER BY r.sub, r.not_before LIMIT :batch FOR UPDATE SKIP LOCKED),
 claimed AS (
    UPDATE c_retry r SET claimed_by = :inst, claim_token = gen_random_uuid()
      FROM cand WHERE r.id = cand.id
    RETURNING r.id, r.claim_token, r.message_id, r.body, r.context)
SELECT count(*) AS n, coalesce(array_agg(id), '{}') AS ids, coalesce(array_agg(claim_token), '{}') AS toks,
       coalesce(sum(length(body) + length(context::text)), 0) AS bytes
  FROM claimed \gset
COMMIT;
\if :n > 0
BEGIN;
WITH done AS (
    DELETE FROM c_retry r USING unnest(:ids::int8[], :toks::uuid[]) AS c(id, token)
     WHERE r.id = c.id AND r.claim_token = c.token AND r.claimed_by = :inst
    RETURNING r.message_id),
 t AS (INSERT INTO tracking_batches (event, port_id, instance_id, message_ids)
       SELECT 'delivered', :sub, :inst, array_agg(message_id) FROM done HAVING count(*) > 0)
SELECT count(*) AS completed FROM done \gset
UPDATE proto_count SET del = del + :completed WHERE client = :client_id;
COMMIT;
\endif
