-- Design C consume, for one subscriber chosen round-robin:
--  1. claim the next tick range (at most :maxticks ticks): one HOT update of c_sub and
--     one c_batch row (relaxed commit);
--  2. read the batch's events: visible in the later tick's snapshot, not in the earlier
--     one's (pgq.batch_event_sql's simple form), only this subscriber's routes;
--  3. complete: delete the c_batch row, one tracking_batches row (synchronous commit).
SELECT nextval('proto_rr') % :nsubs + 1 AS sub \gset
BEGIN;
SET LOCAL synchronous_commit = off;
WITH cur AS (
    SELECT s.id, s.handed_tick FROM c_sub s
     WHERE s.id = :sub AND EXISTS (SELECT 1 FROM host_instances i WHERE i.id = :inst AND i.state = 'alive')
       FOR UPDATE SKIP LOCKED),
 nxt AS (
    SELECT cur.id, cur.handed_tick AS from_tick, max(t.tick_id) AS to_tick
      FROM cur JOIN c_tick t ON t.tick_id > cur.handed_tick AND t.tick_id <= cur.handed_tick + :maxticks
     GROUP BY cur.id, cur.handed_tick),
 upd AS (
    UPDATE c_sub s SET handed_tick = nxt.to_tick, active_at = now() FROM nxt WHERE s.id = nxt.id
    RETURNING nxt.from_tick, nxt.to_tick),
 ins AS (
    INSERT INTO c_batch (sub, from_tick, to_tick, claimed_by)
    SELECT :sub, from_tick, to_tick, :inst FROM upd RETURNING from_tick, to_tick)
SELECT coalesce(max(from_tick), 0) AS from_tick, coalesce(max(to_tick), 0) AS to_tick FROM ins \gset
COMMIT;
\if :to_tick > 0
SELECT count(*) AS n, coalesce(array_agg(e.message_id), '{}') AS mids,
       coalesce(sum(length(e.body) + length(e.context::text)), 0) AS bytes
  FROM c_tick lo, c_tick hi, c_event e
 WHERE lo.tick_id = :from_tick AND hi.tick_id = :to_tick
   AND e.route IN (0, :sub)
   AND e.ev_txid >= pg_snapshot_xmin(lo.snap) AND e.ev_txid < pg_snapshot_xmax(hi.snap)
   AND pg_visible_in_snapshot(e.ev_txid, hi.snap)
   AND NOT pg_visible_in_snapshot(e.ev_txid, lo.snap) \gset
BEGIN;
DELETE FROM c_batch WHERE sub = :sub AND from_tick = :from_tick AND claimed_by = :inst;
INSERT INTO tracking_batches (event, port_id, instance_id, message_ids)
SELECT 'delivered', :sub, :inst, :mids::uuid[] WHERE :n > 0;
UPDATE proto_count SET del = del + :n WHERE client = :client_id;
COMMIT;
\endif
