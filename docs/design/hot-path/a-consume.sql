-- Design A consume: delivery.rs deliveries_claim (relaxed commit) then complete_exec
-- (synchronous commit), for one port chosen round-robin.
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
WITH done AS (
    DELETE FROM deliveries d USING unnest(:ids::int8[], :toks::uuid[]) AS c(id, token)
     WHERE d.id = c.id AND d.claim_token = c.token AND d.claimed_by = :inst
       AND (d.seq IS NULL OR EXISTS (
            SELECT 1 FROM leases l WHERE l.port_id = d.port_id AND l.bucket = d.bucket AND l.holder = :inst
               AND l.epoch = d.claim_epoch AND l.expires_at > now()))
    RETURNING d.id, d.message_id, d.port_id),
 gone AS (
    DELETE FROM messages m WHERE m.id IN (SELECT message_id FROM done)
       AND NOT EXISTS (SELECT 1 FROM deliveries x
                        WHERE x.message_id = m.id AND x.id NOT IN (SELECT id FROM done))
       AND NOT EXISTS (SELECT 1 FROM suspended_items s WHERE s.message_id = m.id)
       AND NOT EXISTS (SELECT 1 FROM instance_deliveries r WHERE r.message_id = m.id)
    RETURNING m.id),
 ev AS (
    INSERT INTO tracking_events (message_id, event, port_id, instance_id, detail)
    SELECT done.message_id, 'delivered', done.port_id, :inst,
           'received from ' || coalesce('location ' || rl.name, 'a publish call')
      FROM done
      JOIN send_ports p ON p.id = done.port_id JOIN hosts h ON h.id = p.host_id
      LEFT JOIN messages m ON m.id = done.message_id
      LEFT JOIN receive_locations rl ON rl.id = m.receive_location_id
     WHERE coalesce(p.tracking, h.tracking) <> 'off')
SELECT count(*) AS completed FROM done \gset
UPDATE proto_count SET del = del + :completed WHERE client = :client_id;
COMMIT;
\endif
