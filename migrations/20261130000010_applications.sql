-- Applications (bindings as code): receive ports, receive locations, send ports and send
-- port groups belong to one application (default 'default'), which `mbx export
-- --application A` writes out and `mbx apply --prune` prunes within. Hosts, property
-- declarations and group links are shared by every application.
ALTER TABLE receive_ports ADD COLUMN application text NOT NULL DEFAULT 'default'
    CHECK (application ~ '^[A-Za-z0-9_][A-Za-z0-9_.-]*$');
ALTER TABLE receive_locations ADD COLUMN application text NOT NULL DEFAULT 'default'
    CHECK (application ~ '^[A-Za-z0-9_][A-Za-z0-9_.-]*$');
ALTER TABLE send_ports ADD COLUMN application text NOT NULL DEFAULT 'default'
    CHECK (application ~ '^[A-Za-z0-9_][A-Za-z0-9_.-]*$');
ALTER TABLE send_port_groups ADD COLUMN application text NOT NULL DEFAULT 'default'
    CHECK (application ~ '^[A-Za-z0-9_][A-Za-z0-9_.-]*$');
