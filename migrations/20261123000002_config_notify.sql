-- Configuration changes wake running host instances (SPEC §4: within 1 s, without a
-- restart). A statement-level trigger notifies `mbx_config` on commit; configuration
-- changes are rare, so serialising their commits costs nothing (publishes notify on their
-- own channel, after commit, never from a trigger).
CREATE FUNCTION mbx_notify_config() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    PERFORM pg_notify('mbx_config', TG_TABLE_NAME);
    RETURN NULL;
END;
$$;

CREATE TRIGGER send_ports_notify AFTER INSERT OR UPDATE OR DELETE ON send_ports
    FOR EACH STATEMENT EXECUTE FUNCTION mbx_notify_config();
CREATE TRIGGER send_port_groups_notify AFTER INSERT OR UPDATE OR DELETE ON send_port_groups
    FOR EACH STATEMENT EXECUTE FUNCTION mbx_notify_config();
CREATE TRIGGER receive_locations_notify AFTER INSERT OR UPDATE OR DELETE ON receive_locations
    FOR EACH STATEMENT EXECUTE FUNCTION mbx_notify_config();
