-- Design A, the baseline: today's MessageBox hot path (migrations/ 1, 3, 4, 14; the
-- statements of crates/messagebox/src/publish.rs and delivery.rs). Per message: one
-- messages row; per subscriber one deliveries row, inserted at publish, claimed by an
-- UPDATE that changes indexed columns (state, claimed_by: not HOT), deleted on completion
-- with the message when its last delivery goes; at the default tracking level
-- ('failures') a 'delivered' tracking_events row per completed delivery.
-- psql variables: nsubs (send ports), tracking ('failures' = mbx's default, or 'off').

CREATE TABLE hosts (
    id       bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    name     text NOT NULL UNIQUE,
    tracking text NOT NULL DEFAULT 'failures' CHECK (tracking IN ('off', 'failures', 'all'))
);
INSERT INTO hosts (name, tracking) VALUES ('bench', :'tracking');

CREATE TABLE host_instances (
    id      uuid PRIMARY KEY,
    host_id bigint NOT NULL REFERENCES hosts (id),
    state   text NOT NULL DEFAULT 'alive'
);
INSERT INTO host_instances (id, host_id) VALUES ('00000000-0000-0000-0000-000000000001', 1);

CREATE TABLE receive_locations (id bigint PRIMARY KEY, name text NOT NULL);

CREATE TABLE send_ports (
    id       bigint PRIMARY KEY,
    name     text NOT NULL UNIQUE,
    host_id  bigint NOT NULL REFERENCES hosts (id),
    address  text,
    backup_address text,
    state    text NOT NULL DEFAULT 'started',
    tracking text
);
INSERT INTO send_ports (id, name, host_id, address)
SELECT g, 'port' || g, 1, 'null:' FROM generate_series(1, :nsubs) g;

CREATE TABLE send_port_groups (id bigint PRIMARY KEY, state text NOT NULL);

CREATE TABLE leases (
    port_id bigint, bucket integer NOT NULL DEFAULT 0, holder uuid, epoch bigint NOT NULL DEFAULT 0,
    expires_at timestamptz, checkpoint text, UNIQUE (port_id, bucket)
);

CREATE TABLE messages (
    id                  uuid PRIMARY KEY,
    content_type        text NOT NULL,
    body                bytea,
    body_size           bigint NOT NULL CHECK (body_size >= 0),
    chunked             boolean NOT NULL DEFAULT false,
    context             jsonb NOT NULL,
    published_at        timestamptz NOT NULL DEFAULT now(),
    publisher_host_id   bigint,
    receive_location_id bigint,
    CHECK (chunked = (body IS NULL))
) WITH (fillfactor = 90);

CREATE TABLE deliveries (
    id               bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    message_id       uuid NOT NULL,
    port_id          bigint NOT NULL,
    via_port         boolean NOT NULL,
    via_groups       bigint[] NOT NULL DEFAULT '{}',
    state            text NOT NULL DEFAULT 'ready' CHECK (state IN ('ready', 'claimed')),
    transport        text NOT NULL DEFAULT 'primary' CHECK (transport IN ('primary', 'backup')),
    retries          integer NOT NULL DEFAULT 0 CHECK (retries >= 0),
    errors           jsonb NOT NULL DEFAULT '[]',
    not_before       timestamptz NOT NULL DEFAULT now(),
    expires_at       timestamptz,
    priority         smallint NOT NULL DEFAULT 0,
    order_key        text,
    seq              bigint,
    claimed_by       uuid,
    claim_token      uuid,
    claimed_at       timestamptz,
    reclaims         integer NOT NULL DEFAULT 0,
    body_size        bigint NOT NULL,
    created_at       timestamptz NOT NULL DEFAULT now(),
    claim_epoch      bigint,
    bucket           integer NOT NULL DEFAULT 0,
    CHECK ((state = 'claimed') = (claim_token IS NOT NULL)),
    CHECK ((state = 'claimed') = (claimed_by IS NOT NULL)),
    CHECK ((seq IS NULL) = (order_key IS NULL)),
    CHECK (via_port OR cardinality(via_groups) > 0)
) WITH (fillfactor = 80, autovacuum_vacuum_scale_factor = 0.01, autovacuum_analyze_scale_factor = 0.02,
        autovacuum_vacuum_cost_delay = 0);
CREATE INDEX deliveries_claim ON deliveries (port_id, priority DESC, id) WHERE state = 'ready';
CREATE INDEX deliveries_message ON deliveries (message_id);
CREATE INDEX deliveries_claimed_by ON deliveries (claimed_by) WHERE state = 'claimed';
CREATE UNIQUE INDEX deliveries_ordered ON deliveries (port_id, order_key, seq) WHERE seq IS NOT NULL;
CREATE INDEX deliveries_ordered_head ON deliveries (port_id, seq) WHERE seq IS NOT NULL;
CREATE INDEX deliveries_keyed_age ON deliveries (port_id, id) WHERE seq IS NOT NULL;

CREATE TABLE suspended_items (
    id bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY, message_id uuid NOT NULL, port_id bigint,
    reason text NOT NULL, errors jsonb NOT NULL DEFAULT '[]', suspended_at timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX suspended_items_message ON suspended_items (message_id);

CREATE TABLE instance_deliveries (
    message_id uuid NOT NULL, instance_id uuid NOT NULL, correlation_token text NOT NULL,
    PRIMARY KEY (instance_id, message_id)
);
CREATE INDEX instance_deliveries_message ON instance_deliveries (message_id);

CREATE TABLE tracking_events (
    id          bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    message_id  uuid NOT NULL,
    at          timestamptz NOT NULL DEFAULT clock_timestamp(),
    event       text NOT NULL,
    port_id     bigint,
    instance_id uuid,
    detail      text
);
CREATE INDEX tracking_events_message ON tracking_events (message_id, id);
CREATE INDEX tracking_events_at ON tracking_events (at);
