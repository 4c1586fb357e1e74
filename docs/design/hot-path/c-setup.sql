-- Design C: an append-only log with per-subscriber cursors and table rotation, after PgQ
-- (github.com/pgq/pgq: structure/tables.sql, functions/pgq.ticker.sql, pgq.next_batch.sql,
-- pgq.batch_event_sql.sql, pgq.maint_rotate_tables.sql).
--  * Publish inserts one c_event row per message, whatever the number of subscribers,
--    into the current one of three tables (here list partitions of c_event). Events are
--    never updated or deleted; a whole table is truncated once every subscriber is past it.
--  * A tick records pg_current_snapshot(). A subscriber's batch is the events committed
--    between two ticks: visible in the later tick's snapshot and not in the earlier one's
--    (not "id > cursor": an id or txid cursor skips a transaction that commits late).
--  * Per subscriber one c_sub row: handed_tick, the end of the last batch handed out
--    (HOT update per batch). Several workers of one subscriber take successive tick
--    ranges (cooperative consumers, as pgq_coop); each batch in flight is a c_batch row,
--    inserted at claim and deleted at completion. A subscriber has consumed everything
--    up to least(handed_tick, its oldest c_batch.from_tick).
--  * Routing: each event carries a route (0 = every subscriber, k = subscriber k; a real
--    one interns the routed set of subscribers); the index (route, ev_txid) lets a
--    subscriber read only its own events.
--  * Exceptions only get rows: a failed delivery becomes a c_retry row (PgQ's
--    retry_queue), a suspended one a c_suspended row.
-- psql variables: nsubs.

CREATE TABLE hosts (id bigint PRIMARY KEY, name text NOT NULL, tracking text NOT NULL DEFAULT 'failures');
INSERT INTO hosts VALUES (1, 'bench', 'failures');
CREATE TABLE host_instances (id uuid PRIMARY KEY, host_id bigint NOT NULL, state text NOT NULL DEFAULT 'alive');
INSERT INTO host_instances (id, host_id) VALUES ('00000000-0000-0000-0000-000000000001', 1);

CREATE TABLE c_queue (
    singleton    boolean PRIMARY KEY DEFAULT true CHECK (singleton),
    cur_table    int NOT NULL DEFAULT 0,
    ntables      int NOT NULL DEFAULT 3,
    rotation     interval NOT NULL DEFAULT '3 seconds',   -- PgQ's default is 2 hours
    switch_time  timestamptz NOT NULL DEFAULT now(),
    switch_step1 xid8,
    switch_step2 xid8
);
INSERT INTO c_queue (switch_step1, switch_step2) VALUES (pg_current_xact_id(), pg_current_xact_id());

CREATE SEQUENCE c_event_id;
CREATE TABLE c_event (
    tbl          smallint NOT NULL,
    ev_id        bigint NOT NULL DEFAULT nextval('c_event_id'),
    ev_txid      xid8 NOT NULL DEFAULT pg_current_xact_id(),
    route        int NOT NULL,
    message_id   uuid NOT NULL,
    content_type text NOT NULL,
    body_size    bigint NOT NULL,
    context      jsonb NOT NULL,
    published_at timestamptz NOT NULL DEFAULT now(),
    publisher_host_id bigint,
    body         bytea
) PARTITION BY LIST (tbl);
CREATE TABLE c_event_0 PARTITION OF c_event FOR VALUES IN (0) WITH (autovacuum_enabled = false);
CREATE TABLE c_event_1 PARTITION OF c_event FOR VALUES IN (1) WITH (autovacuum_enabled = false);
CREATE TABLE c_event_2 PARTITION OF c_event FOR VALUES IN (2) WITH (autovacuum_enabled = false);
CREATE INDEX c_event_route ON c_event (route, ev_txid);

CREATE TABLE c_tick (
    tick_id  bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    snap     pg_snapshot NOT NULL,
    ev_seq   bigint NOT NULL,          -- c_event_id at the tick: a size hint, as PgQ's tick_event_seq
    at       timestamptz NOT NULL DEFAULT now()
);
INSERT INTO c_tick (snap, ev_seq) VALUES (pg_current_snapshot(), 0);

CREATE TABLE c_sub (
    id          int PRIMARY KEY,
    handed_tick bigint NOT NULL,
    active_at   timestamptz
) WITH (fillfactor = 20);
INSERT INTO c_sub (id, handed_tick) SELECT g, 1 FROM generate_series(1, :nsubs) g;

CREATE TABLE c_batch (
    sub        int NOT NULL,
    from_tick  bigint NOT NULL,
    to_tick    bigint NOT NULL,
    claimed_by uuid NOT NULL,
    claimed_at timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (sub, from_tick)
);

-- exceptions: only failed or suspended deliveries get a row (a copy of the event, so
-- rotation never has to wait for them)
CREATE TABLE c_retry (
    id          bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    sub         int NOT NULL,
    message_id  uuid NOT NULL,
    content_type text NOT NULL,
    context     jsonb NOT NULL,
    body        bytea,
    retries     int NOT NULL,
    not_before  timestamptz NOT NULL,
    errors      jsonb NOT NULL DEFAULT '[]',
    claimed_by  uuid,
    claim_token uuid
) WITH (fillfactor = 50);
CREATE INDEX c_retry_due ON c_retry (sub, not_before);

CREATE TABLE tracking_batches (
    id          bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    at          timestamptz NOT NULL DEFAULT now(),
    event       text NOT NULL,
    port_id     bigint,
    instance_id uuid,
    message_ids uuid[] NOT NULL
);

-- A tick: PgQ's ticker. Called after each publish batch here (so a batch is about
-- :batch messages, as in A and B); a real ticker ticks on a timer or on an event count.
CREATE FUNCTION c_tick() RETURNS void LANGUAGE sql AS $$
    INSERT INTO c_tick (snap, ev_seq) SELECT pg_current_snapshot(), last_value FROM c_event_id $$;

-- The position a subscriber has fully consumed (rotation and lag read it).
CREATE FUNCTION c_sub_done(s c_sub) RETURNS bigint LANGUAGE sql STABLE AS $$
    SELECT least(s.handed_tick, (SELECT min(from_tick) FROM c_batch b WHERE b.sub = s.id)) $$;

-- Rotation step 1 (pgq.maint_rotate_tables_step1): when the period has passed and the
-- slowest subscriber's position is past every transaction that could still write into
-- the table switched away from last time (its tick's xmin > switch_step2), truncate the
-- next table (without waiting for a lock: skip the rotation instead) and make it current.
CREATE FUNCTION c_rotate_step1() RETURNS text LANGUAGE plpgsql AS $$
DECLARE
    q c_queue;
    lowest bigint;
    lowest_xmin xid8;
    nr int;
BEGIN
    SELECT * INTO q FROM c_queue
     WHERE switch_step2 IS NOT NULL AND switch_time + rotation < now() FOR UPDATE SKIP LOCKED;
    IF NOT FOUND THEN RETURN 'not due'; END IF;
    SELECT min(c_sub_done(s)) INTO lowest FROM c_sub s;
    SELECT pg_snapshot_xmin(snap) INTO lowest_xmin FROM c_tick WHERE tick_id = lowest;
    IF lowest_xmin <= q.switch_step2 THEN
        RETURN 'waiting: slowest subscriber at tick ' || lowest || ' (xmin ' || lowest_xmin
               || ') has not passed ' || q.switch_step2;
    END IF;
    nr := (q.cur_table + 1) % q.ntables;
    BEGIN
        EXECUTE format('LOCK TABLE c_event_%s IN ACCESS EXCLUSIVE MODE NOWAIT', nr);
        EXECUTE format('TRUNCATE c_event_%s', nr);
    EXCEPTION WHEN lock_not_available THEN
        RETURN 'skipped: c_event_' || nr || ' is in use';
    END;
    UPDATE c_queue SET cur_table = nr, switch_time = now(), switch_step1 = pg_current_xact_id(),
                       switch_step2 = NULL;
    -- ticks wholly before the previous switch are no longer needed (as PgQ)
    DELETE FROM c_tick WHERE pg_snapshot_xmin(snap) < q.switch_step2 AND tick_id < lowest;
    RETURN 'rotated: truncated c_event_' || nr;
END $$;

-- Rotation step 2, in a later transaction (pgq.maint_rotate_tables_step2): the txid from
-- which every new transaction sees the switch, so writes into the old table end before it.
CREATE FUNCTION c_rotate_step2() RETURNS void LANGUAGE sql AS $$
    UPDATE c_queue SET switch_step2 = pg_current_xact_id() WHERE switch_step2 IS NULL $$;
