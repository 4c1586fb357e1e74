#!/usr/bin/env bash
# The traps of a log-with-cursors MessageBox, shown on a scratch database (docs/design/hot-path.md,
# "Traps"). Usage: docs/design/hot-path/traps.sh [late-commit|long-tx|waits|all]
# PGHOST/PGPORT/PGUSER as for psql (default 127.0.0.1:5432 postgres); the database
# hotpath_traps is created and dropped. Sessions that must overlap run as background psql
# processes; the waits between them are sleeps (seconds), so run it on a machine that is
# not saturated or lengthen SLEEP.
set -euo pipefail
export PGHOST=${PGHOST:-127.0.0.1} PGPORT=${PGPORT:-5432} PGUSER=${PGUSER:-postgres}
HERE=$(cd "$(dirname "$0")" && pwd)
DB=hotpath_traps
SLEEP=${SLEEP:-1}
q() { psql -X -q -At -v ON_ERROR_STOP=1 -d $DB "$@"; }
fresh() {
    psql -X -q -d postgres -c "DROP DATABASE IF EXISTS $DB" -c "CREATE DATABASE $DB"
}

late_commit() {
    echo "== 1. A cursor over ids skips a row that commits late; a snapshot tick does not"
    fresh
    q <<'EOF'
CREATE TABLE ev (id bigserial PRIMARY KEY, txid xid8 NOT NULL DEFAULT pg_current_xact_id(), what text);
CREATE TABLE tick (id int PRIMARY KEY, snap pg_snapshot NOT NULL);
INSERT INTO tick VALUES (1, pg_current_snapshot());
EOF
    # session L takes id 1 first and commits last
    psql -X -q -d $DB -c "BEGIN" -c "INSERT INTO ev (what) VALUES ('late: id 1, commits last')" \
        -c "SELECT pg_sleep($SLEEP * 3)" -c "COMMIT" >/dev/null &
    sleep "$SLEEP"
    q -c "INSERT INTO ev (what) VALUES ('early: id 2, commits first')"
    q -c "INSERT INTO tick VALUES (2, pg_current_snapshot())"
    echo "-- while L is open: the naive consumer reads id > 0 and moves its cursor to the highest id it saw"
    local cursor
    cursor=$(q -c "SELECT coalesce(max(id), 0) FROM ev WHERE id > 0")
    q -c "SELECT 'naive reads: id ' || id || ' (' || what || ')' FROM ev WHERE id > 0 ORDER BY id"
    echo "   naive cursor := $cursor; tick 2 snapshot: $(q -c "SELECT snap FROM tick WHERE id = 2") (L's txid is in progress in it)"
    wait
    q -c "INSERT INTO tick VALUES (3, pg_current_snapshot())"
    echo "-- after L committed: the naive consumer reads id > $cursor"
    q -c "SELECT count(*) || ' rows: id 1 is never read' FROM ev WHERE id > $cursor"
    echo "-- the snapshot consumer's batches: (tick 1, tick 2] then (tick 2, tick 3]"
    q <<'EOF'
SELECT 'batch (' || lo.id || ', ' || hi.id || ']: id ' || e.id || ' (' || e.what || ')'
  FROM tick lo JOIN tick hi ON hi.id = lo.id + 1, ev e
 WHERE pg_visible_in_snapshot(e.txid, hi.snap) AND NOT pg_visible_in_snapshot(e.txid, lo.snap)
 ORDER BY lo.id, e.id;
EOF
}

long_tx() {
    echo "== 2. A long open transaction (a large publish) against rotation and the other consumers"
    fresh
    q -f "$HERE/common.sql" >/dev/null
    q -v nsubs=2 -f "$HERE/c-setup.sql" >/dev/null
    q -c "UPDATE c_queue SET rotation = '0'"
    pub() { # one event published and ticked, as c-publish.sql does
        q -c "INSERT INTO c_event (tbl, route, message_id, content_type, body_size, context, body)
              SELECT cur_table, 0, gen_random_uuid(), 'text/plain', 1, '{}', '$1' FROM c_queue" \
          -c "SELECT c_tick()" >/dev/null
    }
    consume() { # one batch for subscriber $1, as c-consume.sql does (maxticks large)
        q <<EOF
WITH cur AS (SELECT id, handed_tick FROM c_sub WHERE id = $1),
 nxt AS (SELECT cur.id, cur.handed_tick AS from_tick, max(t.tick_id) AS to_tick
           FROM cur JOIN c_tick t ON t.tick_id > cur.handed_tick GROUP BY 1, 2),
 upd AS (UPDATE c_sub s SET handed_tick = nxt.to_tick FROM nxt WHERE s.id = nxt.id RETURNING nxt.*)
SELECT '   subscriber $1 batch (' || from_tick || ', ' || to_tick || ']: '
       || coalesce((SELECT string_agg(convert_from(e.body, 'UTF8'), ', ' ORDER BY e.ev_id)
                      FROM c_tick lo, c_tick hi, c_event e
                     WHERE lo.tick_id = upd.from_tick AND hi.tick_id = upd.to_tick
                       AND e.ev_txid >= pg_snapshot_xmin(lo.snap) AND e.ev_txid < pg_snapshot_xmax(hi.snap)
                       AND pg_visible_in_snapshot(e.ev_txid, hi.snap)
                       AND NOT pg_visible_in_snapshot(e.ev_txid, lo.snap)), '(nothing)')
  FROM upd;
EOF
    }
    rotate() {
        echo "   rotation: $(q -c "SELECT c_rotate_step1()") (current table $(q -c "SELECT cur_table FROM c_queue"))"
        q -c "SELECT c_rotate_step2()" >/dev/null
    }
    pub before
    consume 1; consume 2
    echo "-- L opens: BEGIN; insert an event into c_event_$(q -c "SELECT cur_table FROM c_queue") (a large publish), held $((SLEEP * 8)) s"
    psql -X -q -d $DB -c "BEGIN" \
        -c "INSERT INTO c_event (tbl, route, message_id, content_type, body_size, context, body)
            SELECT cur_table, 0, gen_random_uuid(), 'text/plain', 1, '{}', 'LARGE' FROM c_queue" \
        -c "SELECT pg_sleep($SLEEP * 8)" -c "COMMIT" >/dev/null &
    sleep "$SLEEP"
    for i in 1 2 3; do
        pub "m$i"
        consume 1; consume 2
        rotate
    done
    echo "-- the batch query's range starts at the oldest tick's xmin, L's txid: what one batch scans while L is open"
    pub m4
    q -c "EXPLAIN (ANALYZE, COSTS OFF, TIMING OFF, SUMMARY OFF)
          SELECT e.* FROM c_tick lo, c_tick hi, c_event e
           WHERE lo.tick_id = (SELECT max(tick_id) - 1 FROM c_tick) AND hi.tick_id = (SELECT max(tick_id) FROM c_tick)
             AND e.route = 0 AND e.ev_txid >= pg_snapshot_xmin(lo.snap) AND e.ev_txid < pg_snapshot_xmax(hi.snap)
             AND pg_visible_in_snapshot(e.ev_txid, hi.snap) AND NOT pg_visible_in_snapshot(e.ev_txid, lo.snap)" |
        grep -E "Index Scan|Rows Removed|Filter" | sed 's/^/   /'
    consume 1; consume 2
    wait
    echo "-- L committed"
    pub after
    consume 1; consume 2
    rotate
    pub m5; consume 1; consume 2; rotate
    pub m6; consume 1; consume 2; rotate
    echo "   events left: $(q -c "SELECT string_agg(tableoid::regclass || ':' || convert_from(body, 'UTF8'), ' ' ORDER BY ev_id) FROM c_event")"
}

waits() {
    local n=${WAITS:-1000000}
    echo "== 3. A correlated wait: $n waiting instances, one message for one of them"
    fresh
    q <<EOF
-- one row per waiting process instance and correlation set (an orchestration's receive)
CREATE TABLE waits (
    orchestration int NOT NULL,
    correlation   text NOT NULL,     -- the correlation set's values, normalised
    instance_id   bigint NOT NULL,
    waiting_since timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (orchestration, correlation)
);
-- what a matched message becomes: one row in the instance's inbox
CREATE TABLE instance_inbox (instance_id bigint NOT NULL, message_id uuid NOT NULL, PRIMARY KEY (instance_id, message_id));
INSERT INTO waits (orchestration, correlation, instance_id)
SELECT 1, 'order-' || g, g FROM generate_series(1, $n) g;
VACUUM ANALYZE waits;
EOF
    echo "-- publish of a message whose correlation value is order-777777: one index lookup"
    q -c "EXPLAIN (ANALYZE, COSTS OFF, SUMMARY ON)
          SELECT instance_id FROM waits WHERE orchestration = 1 AND correlation = 'order-777777'" | sed 's/^/   /'
    echo "-- and the rows it writes: the wait ends (delete), the instance gets the message (insert)"
    q -c "SELECT pg_stat_reset()" >/dev/null
    q <<'EOF'
WITH w AS (DELETE FROM waits WHERE orchestration = 1 AND correlation = 'order-777777' RETURNING instance_id)
INSERT INTO instance_inbox SELECT instance_id, gen_random_uuid() FROM w;
EOF
    sleep 1
    q -c "SELECT '   ' || relname || ': ' || n_tup_ins || ' inserted, ' || n_tup_del || ' deleted'
            FROM pg_stat_user_tables WHERE relname IN ('waits', 'instance_inbox') ORDER BY relname"
    echo "-- as cursors it would be $n subscribers each reading every message's batch: $n reads per message"
}

case ${1:-all} in
    late-commit) late_commit ;;
    long-tx) long_tx ;;
    waits) waits ;;
    all) late_commit; echo; long_tx; echo; waits ;;
    *) echo "usage: $0 [late-commit|long-tx|waits|all]" >&2; exit 2 ;;
esac
psql -X -q -d postgres -c "DROP DATABASE IF EXISTS $DB"
