-- Design C with one cursor for a group of ports (variant "CG"): the same log, ticks and
-- rotation as c-setup.sql, but the ports a host delivers to unordered share one cursor.
-- A batch is read once, whatever its events' routes, and each event is handed to the
-- ports it was routed to (in the host's memory); a port whose endpoint fails or lags
-- leaves the group (its events become exception rows, or it gets a cursor of its own).
-- Reads by txid range need PgQ's index on ev_txid.
\set nsubs 1
\ir c-setup.sql
CREATE INDEX c_event_txid ON c_event (ev_txid);
