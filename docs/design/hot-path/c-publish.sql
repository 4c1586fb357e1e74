-- Design C publish: one event row per message into the current table (synchronous
-- commit); then a tick and the rotation check (relaxed commits: a tick or a switch lost
-- in a crash is lost together with everything that read it, which commits later in WAL).
SELECT (coalesce(sum(pub) - sum(del), 0) < :window)::int AS go FROM proto_count \gset
\if :go
BEGIN;
INSERT INTO c_event (tbl, route, message_id, content_type, body_size, context, publisher_host_id, body)
SELECT q.cur_table, CASE WHEN :spread = 1 THEN nextval('proto_spread') % :nsubs + 1 ELSE 0 END,
       gen_random_uuid(), 'application/octet-stream', 1024, proto_context(), 1, proto_body()
  FROM c_queue q, generate_series(1, :batch);
UPDATE proto_count SET pub = pub + :perpub WHERE client = :client_id;
COMMIT;
BEGIN;
SET LOCAL synchronous_commit = off;
SELECT c_tick();
SELECT c_rotate_step1();
COMMIT;
BEGIN;
SET LOCAL synchronous_commit = off;
SELECT c_rotate_step2();
COMMIT;
\endif
