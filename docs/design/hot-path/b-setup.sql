-- Design B: today's rows, but every claim is a HOT update, and a message with a single
-- subscriber carries its delivery in its own row.
--  * b_messages: the message; when it was routed to exactly one port, also that
--    delivery (port_id, claim columns): one row inserted, HOT-updated by the claim,
--    deleted on completion -- pgmq's row work.
--  * b_deliveries: one row per (message, port) only when a message has several
--    subscribers; HOT claim, deleted on completion, message deleted with its last one.
--  * No index covers a column the claim changes: "ready" is claim_token IS NULL, checked
--    on the heap row, not in an index predicate; a dead instance's claims are found by a
--    scan that runs only when an instance is declared dead (rare), not by an index.
--  * Low fillfactor so the claim's new row version fits on its page (HOT); the claim
--    columns come last so the update's WAL record is prefix-compressed (body unchanged).
--  * 'delivered' is tracked per completed batch (one tracking_batches row listing the
--    batch's message ids), not per delivery.
-- psql variable: nsubs.

CREATE TABLE hosts (id bigint PRIMARY KEY, name text NOT NULL, tracking text NOT NULL DEFAULT 'failures');
INSERT INTO hosts VALUES (1, 'bench', 'failures');
CREATE TABLE host_instances (id uuid PRIMARY KEY, host_id bigint NOT NULL, state text NOT NULL DEFAULT 'alive');
INSERT INTO host_instances (id, host_id) VALUES ('00000000-0000-0000-0000-000000000001', 1);
CREATE TABLE send_ports (id bigint PRIMARY KEY, name text NOT NULL UNIQUE, host_id bigint NOT NULL,
                         address text, state text NOT NULL DEFAULT 'started', tracking text);
INSERT INTO send_ports (id, name, host_id, address)
SELECT g, 'port' || g, 1, 'null:' FROM generate_series(1, :nsubs) g;

CREATE TABLE b_messages (
    id                bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    uid               uuid NOT NULL,
    port_id           bigint,          -- the single subscriber, or NULL (see b_deliveries)
    content_type      text NOT NULL,
    body_size         bigint NOT NULL,
    context           jsonb NOT NULL,
    published_at      timestamptz NOT NULL DEFAULT now(),
    publisher_host_id bigint,
    body              bytea,
    -- the inline delivery's state (unindexed: the claim is HOT)
    retries           integer NOT NULL DEFAULT 0,
    not_before        timestamptz NOT NULL DEFAULT now(),
    claimed_by        uuid,
    claim_token       uuid,
    claimed_at        timestamptz
) WITH (fillfactor = 50, autovacuum_vacuum_scale_factor = 0.01, autovacuum_analyze_scale_factor = 0.02,
        autovacuum_vacuum_cost_delay = 0);
CREATE INDEX b_messages_claim ON b_messages (port_id, id) WHERE port_id IS NOT NULL;

CREATE TABLE b_deliveries (
    id          bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    message_id  bigint NOT NULL,
    port_id     bigint NOT NULL,
    via_port    boolean NOT NULL DEFAULT true,
    via_groups  bigint[] NOT NULL DEFAULT '{}',
    transport   text NOT NULL DEFAULT 'primary',
    priority    smallint NOT NULL DEFAULT 0,
    order_key   text,
    seq         bigint,
    bucket      integer NOT NULL DEFAULT 0,
    body_size   bigint NOT NULL,
    created_at  timestamptz NOT NULL DEFAULT now(),
    retries     integer NOT NULL DEFAULT 0,
    errors      jsonb NOT NULL DEFAULT '[]',
    not_before  timestamptz NOT NULL DEFAULT now(),
    reclaims    integer NOT NULL DEFAULT 0,
    claim_epoch bigint,
    claimed_by  uuid,
    claim_token uuid,
    claimed_at  timestamptz
) WITH (fillfactor = 50, autovacuum_vacuum_scale_factor = 0.01, autovacuum_analyze_scale_factor = 0.02,
        autovacuum_vacuum_cost_delay = 0);
CREATE INDEX b_deliveries_claim ON b_deliveries (port_id, priority DESC, id);
CREATE INDEX b_deliveries_message ON b_deliveries (message_id);

CREATE TABLE tracking_batches (
    id          bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    at          timestamptz NOT NULL DEFAULT now(),
    event       text NOT NULL,
    port_id     bigint,
    instance_id uuid,
    message_ids uuid[] NOT NULL
);
