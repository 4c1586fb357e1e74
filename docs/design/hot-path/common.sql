-- Shared by every prototype database (docs/design/hot-path.md). Nothing here is measured:
-- proto_count is UNLOGGED (no WAL) and left out of the row counts; the helpers write nothing.

-- Progress counters, one row per pgbench client (no contention): deliveries published
-- (messages x subscribers they were routed to) and deliveries completed.
CREATE UNLOGGED TABLE proto_count (
    client int PRIMARY KEY,
    pub    bigint NOT NULL DEFAULT 0,
    del    bigint NOT NULL DEFAULT 0
);
INSERT INTO proto_count (client) SELECT g FROM generate_series(0, 63) g;

-- round-robin subscriber choice for consumers, round-robin port for 'spread' publishes
-- (UNLOGGED sequences, PostgreSQL 15: no WAL)
CREATE UNLOGGED SEQUENCE proto_rr;
CREATE UNLOGGED SEQUENCE proto_spread;

-- A 1 KiB body (stored inline, uncompressed: below the TOAST threshold) and a context
-- of the size a received message carries.
CREATE FUNCTION proto_body() RETURNS bytea LANGUAGE sql IMMUTABLE
    AS $$ SELECT decode(repeat('5a', 1024), 'hex') $$;
CREATE FUNCTION proto_context() RETURNS jsonb LANGUAGE sql IMMUTABLE AS $$
    SELECT '{"mbx.ReceivePortName": {"value": {"string": "bench"}, "promoted": true},
             "mbx.InboundTransportType": {"value": {"string": "null"}, "promoted": true},
             "mbx.InboundTransportLocation": {"value": {"string": "null:bench"}, "promoted": false},
             "Order.Region": {"value": {"string": "EU"}, "promoted": true}}'::jsonb $$;

-- Row writes so far in this database (proto_count excluded).
CREATE FUNCTION proto_rows(OUT ins bigint, OUT upd bigint, OUT hot bigint, OUT del bigint)
LANGUAGE sql AS $$
    SELECT coalesce(sum(n_tup_ins), 0)::bigint, coalesce(sum(n_tup_upd), 0)::bigint,
           coalesce(sum(n_tup_hot_upd), 0)::bigint, coalesce(sum(n_tup_del), 0)::bigint
      FROM pg_stat_user_tables WHERE relname <> 'proto_count' $$;

-- Autovacuum on or off for every table of the prototype (off only during the exact
-- accounting pass, which then vacuums explicitly and counts that WAL).
CREATE FUNCTION proto_autovacuum(enabled boolean) RETURNS void LANGUAGE plpgsql AS $$
DECLARE r record;
BEGIN
    FOR r IN SELECT c.oid::regclass AS t FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
              WHERE n.nspname = 'public' AND c.relkind = 'r' AND c.relname <> 'proto_count'
                AND c.relpersistence = 'p' LOOP
        EXECUTE format('ALTER TABLE %s SET (autovacuum_enabled = %s)', r.t, enabled);
    END LOOP;
END $$;
