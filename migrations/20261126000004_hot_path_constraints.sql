-- The hot path without per-row foreign-key triggers (docs/PERFORMANCE.md, "What each
-- optimisation bought"). Every delivery insert ran two RI checks (a SELECT ... FOR KEY
-- SHARE on its message and on its send port: the port's row is shared by every concurrent
-- publish, which turns its lock into MultiXacts), and every message delete ran three (its
-- deliveries, suspended items and chunks). The MessageBox keeps these invariants in its own
-- statements instead:
-- * a delivery is inserted in the transaction that inserts its message, and a message is
--   deleted only by statements that check, in the same statement, that no delivery and no
--   suspended item refers to it (crates/messagebox: complete, terminate, maintenance);
-- * a send port is deleted only once unenlisted (under the exclusive routing lock, so no
--   publish routes to it afterwards) and without deliveries (config.rs send_port_delete).
ALTER TABLE deliveries DROP CONSTRAINT deliveries_message_id_fkey;
ALTER TABLE deliveries DROP CONSTRAINT deliveries_port_id_fkey;
ALTER TABLE suspended_items DROP CONSTRAINT suspended_items_message_id_fkey;

-- Chunks of large bodies go with their message: one statement-level trigger per DELETE
-- instead of a cascade per deleted row.
ALTER TABLE message_chunks DROP CONSTRAINT message_chunks_message_id_fkey;
CREATE FUNCTION mbx_delete_message_chunks() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    DELETE FROM message_chunks c USING gone g WHERE g.chunked AND c.message_id = g.id;
    RETURN NULL;
END $$;
CREATE TRIGGER messages_delete_chunks AFTER DELETE ON messages
    REFERENCING OLD TABLE AS gone FOR EACH STATEMENT EXECUTE FUNCTION mbx_delete_message_chunks();
