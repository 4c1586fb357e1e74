-- The MessageBox schema (SPEC §1–§5). Every state is CHECK-constrained; names are unique
-- within a group (one database = one group). Times that decide anything are the
-- database clock's (now()), never a host's.

-- One row: the group this database is.
CREATE TABLE mbx_group (
    singleton  boolean PRIMARY KEY DEFAULT true CHECK (singleton),
    id         uuid NOT NULL,
    name       text NOT NULL CHECK (name <> ''),
    created_at timestamptz NOT NULL DEFAULT now()
);

-- Routing version: bumped by every change that alters routing (enlist/unenlist, a filter,
-- group membership), under the exclusive routing advisory lock (SPEC §13).
CREATE TABLE routing_state (
    singleton boolean PRIMARY KEY DEFAULT true CHECK (singleton),
    version   bigint NOT NULL
);
INSERT INTO routing_state (version) VALUES (1);

CREATE TABLE hosts (
    id                bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    name              text NOT NULL UNIQUE CHECK (name ~ '^[A-Za-z0-9_][A-Za-z0-9_.-]*$'),
    throttle_publish  bigint NOT NULL DEFAULT 50000 CHECK (throttle_publish > 0),
    throttle_inflight bigint NOT NULL DEFAULT 1000 CHECK (throttle_inflight > 0),
    tracking          text NOT NULL DEFAULT 'failures' CHECK (tracking IN ('off', 'failures', 'all')),
    created_at        timestamptz NOT NULL DEFAULT now()
);

CREATE TABLE host_instances (
    id           uuid PRIMARY KEY,
    host_id      bigint NOT NULL REFERENCES hosts (id),
    machine      text NOT NULL,
    pid          integer NOT NULL,
    version      text NOT NULL,
    started_at   timestamptz NOT NULL DEFAULT now(),
    heartbeat_at timestamptz NOT NULL DEFAULT now(),
    state        text NOT NULL DEFAULT 'alive' CHECK (state IN ('alive', 'dead', 'stopped'))
);
CREATE INDEX host_instances_host ON host_instances (host_id, state);

-- Declared property types; undeclared properties are strings.
CREATE TABLE properties (
    name       text PRIMARY KEY CHECK (name ~ '^[A-Za-z_][A-Za-z0-9_]*(\.[A-Za-z_][A-Za-z0-9_]*)+$'),
    type       text NOT NULL CHECK (type IN ('string', 'integer', 'decimal', 'boolean', 'timestamp')),
    created_at timestamptz NOT NULL DEFAULT now()
);

CREATE TABLE receive_ports (
    id         bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    name       text NOT NULL UNIQUE CHECK (name <> ''),
    two_way    boolean NOT NULL DEFAULT false,
    created_at timestamptz NOT NULL DEFAULT now()
);

CREATE TABLE receive_locations (
    id               bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    name             text NOT NULL UNIQUE CHECK (name <> ''),
    receive_port_id  bigint NOT NULL REFERENCES receive_ports (id),
    host_id          bigint NOT NULL REFERENCES hosts (id),
    address          text NOT NULL,
    pipeline         text NOT NULL DEFAULT 'passthru' CHECK (pipeline IN ('passthru', 'json', 'xml')),
    promote          jsonb NOT NULL DEFAULT '{}',
    settings         jsonb NOT NULL DEFAULT '{}',
    ordered          boolean NOT NULL DEFAULT false,
    max_message_size bigint NOT NULL DEFAULT 104857600 CHECK (max_message_size > 0),
    enabled          boolean NOT NULL DEFAULT false,
    created_at       timestamptz NOT NULL DEFAULT now()
);

CREATE TABLE send_ports (
    id                      bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    name                    text NOT NULL UNIQUE CHECK (name <> ''),
    host_id                 bigint NOT NULL REFERENCES hosts (id),
    address                 text,
    dynamic                 boolean NOT NULL DEFAULT false,
    allow_address           text[] NOT NULL DEFAULT '{}',
    -- the filter as the operator wrote it; its normal form lives in subscriptions
    filter_text             text,
    state                   text NOT NULL CHECK (state IN ('unenlisted', 'stopped', 'started', 'suspended')),
    ordered                 boolean NOT NULL DEFAULT false,
    stop_on_failure         boolean NOT NULL DEFAULT false,
    ordered_commit_batch    integer NOT NULL DEFAULT 32 CHECK (ordered_commit_batch BETWEEN 1 AND 10000),
    retry_count             integer NOT NULL DEFAULT 3 CHECK (retry_count >= 0),
    retry_interval_s        bigint NOT NULL DEFAULT 300 CHECK (retry_interval_s >= 0),
    retry_backoff           text NOT NULL DEFAULT 'fixed' CHECK (retry_backoff IN ('fixed', 'exponential')),
    retry_max_interval_s    bigint NOT NULL DEFAULT 3600 CHECK (retry_max_interval_s >= 0),
    backup_address          text,
    backup_retry_count      integer NOT NULL DEFAULT 3 CHECK (backup_retry_count >= 0),
    backup_retry_interval_s bigint NOT NULL DEFAULT 300 CHECK (backup_retry_interval_s >= 0),
    route_failed            boolean NOT NULL DEFAULT false,
    tracking                text CHECK (tracking IN ('off', 'failures', 'all')),
    solicit_response        boolean NOT NULL DEFAULT false,
    settings                jsonb NOT NULL DEFAULT '{}',
    created_at              timestamptz NOT NULL DEFAULT now(),
    CHECK (dynamic = (address IS NULL)),
    CHECK (NOT (ordered AND dynamic)),
    CHECK (NOT (ordered AND backup_address IS NOT NULL)),
    CHECK (state <> 'suspended' OR (ordered AND stop_on_failure))
);

-- Ordered ports: the per-port (and later per ordered-by value) sequence, taken under this
-- row's lock in the publish transaction so sequence order equals commit order (SPEC §5.3).
CREATE TABLE ordered_sequences (
    port_id   bigint NOT NULL REFERENCES send_ports (id) ON DELETE CASCADE,
    order_key text NOT NULL DEFAULT '',
    next_seq  bigint NOT NULL DEFAULT 1,
    PRIMARY KEY (port_id, order_key)
);

-- Ordered ports and ordered receive locations: one lease each (later one per hash bucket
-- of an ordered-by value). Changes hands only by expiry; epoch fences a former holder.
CREATE TABLE leases (
    id          bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    port_id     bigint REFERENCES send_ports (id) ON DELETE CASCADE,
    location_id bigint REFERENCES receive_locations (id) ON DELETE CASCADE,
    bucket      integer NOT NULL DEFAULT 0,
    holder      uuid REFERENCES host_instances (id) ON DELETE SET NULL,
    epoch       bigint NOT NULL DEFAULT 0,
    expires_at  timestamptz,
    CHECK ((port_id IS NULL) <> (location_id IS NULL)),
    UNIQUE (port_id, bucket),
    UNIQUE (location_id, bucket)
);

CREATE TABLE send_port_groups (
    id          bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    name        text NOT NULL UNIQUE CHECK (name <> ''),
    filter_text text,
    state       text NOT NULL CHECK (state IN ('unenlisted', 'stopped', 'started')),
    created_at  timestamptz NOT NULL DEFAULT now()
);

CREATE TABLE send_port_group_members (
    group_id bigint NOT NULL REFERENCES send_port_groups (id) ON DELETE CASCADE,
    port_id  bigint NOT NULL REFERENCES send_ports (id),
    PRIMARY KEY (group_id, port_id)
);
CREATE INDEX send_port_group_members_port ON send_port_group_members (port_id);

-- What filters become: one row per enlisted subscriber with a filter. Instance
-- subscriptions (a waiting request-response receive, SPEC §5.7) are rows of kind
-- 'instance' keyed by correlation token.
CREATE TABLE subscriptions (
    id                bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    kind              text NOT NULL CHECK (kind IN ('port', 'group', 'instance')),
    port_id           bigint UNIQUE REFERENCES send_ports (id) ON DELETE CASCADE,
    group_id          bigint UNIQUE REFERENCES send_port_groups (id) ON DELETE CASCADE,
    instance_id       uuid REFERENCES host_instances (id) ON DELETE CASCADE,
    correlation_token text UNIQUE,
    -- normal form: {"any_of": [[predicate, ...], ...]}
    filter            jsonb,
    created_at        timestamptz NOT NULL DEFAULT now(),
    CHECK (
        (kind = 'port' AND port_id IS NOT NULL AND group_id IS NULL AND filter IS NOT NULL)
        OR (kind = 'group' AND group_id IS NOT NULL AND port_id IS NULL AND filter IS NOT NULL)
        OR (kind = 'instance' AND instance_id IS NOT NULL AND correlation_token IS NOT NULL)
    )
);

-- Messages are immutable; the body is stored once however many subscribers there are.
-- Bodies up to 1 MiB live in `body`; larger ones in message_chunks.
CREATE TABLE messages (
    id                  uuid PRIMARY KEY,
    content_type        text NOT NULL,
    body                bytea,
    body_size           bigint NOT NULL CHECK (body_size >= 0),
    chunked             boolean NOT NULL DEFAULT false,
    -- {"Order.Region": {"value": {"string": "EU"}, "promoted": true}, ...}
    context             jsonb NOT NULL,
    published_at        timestamptz NOT NULL DEFAULT now(),
    publisher_host_id   bigint REFERENCES hosts (id) ON DELETE SET NULL,
    receive_location_id bigint REFERENCES receive_locations (id) ON DELETE SET NULL,
    CHECK (chunked = (body IS NULL))
) WITH (fillfactor = 90);

CREATE TABLE message_chunks (
    message_id uuid NOT NULL REFERENCES messages (id) ON DELETE CASCADE,
    seq        integer NOT NULL,
    data       bytea NOT NULL,
    PRIMARY KEY (message_id, seq)
);

-- Idempotent receive (SPEC §3 item 6): a (location, source id) published within the
-- dedup window is dropped.
CREATE TABLE received_sources (
    receive_location_id bigint NOT NULL REFERENCES receive_locations (id) ON DELETE CASCADE,
    source_id           text NOT NULL,
    message_id          uuid NOT NULL,
    published_at        timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (receive_location_id, source_id)
);
CREATE INDEX received_sources_age ON received_sources (published_at);

-- One (message, send port) work item. A hot table: inserted at publish, deleted on
-- completion (never updated to 'done').
CREATE TABLE deliveries (
    id               bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    message_id       uuid NOT NULL REFERENCES messages (id),
    port_id          bigint NOT NULL REFERENCES send_ports (id),
    -- the paths it was routed by: the port's own subscription and/or groups
    via_port         boolean NOT NULL,
    via_groups       bigint[] NOT NULL DEFAULT '{}',
    state            text NOT NULL DEFAULT 'ready' CHECK (state IN ('ready', 'claimed')),
    transport        text NOT NULL DEFAULT 'primary' CHECK (transport IN ('primary', 'backup')),
    -- retries spent on the current transport (overlaid as mbx.RetryCount)
    retries          integer NOT NULL DEFAULT 0 CHECK (retries >= 0),
    -- every attempt's error: [{"at": ..., "transport": ..., "attempt": n, "error": ...}]
    errors           jsonb NOT NULL DEFAULT '[]',
    not_before       timestamptz NOT NULL DEFAULT now(),
    -- room for message expiry and priorities (SPEC §5.2)
    expires_at       timestamptz,
    priority         smallint NOT NULL DEFAULT 0,
    -- ordered ports: the sequence taken at publish and its key (SPEC §5.3)
    order_key        text,
    seq              bigint,
    claimed_by       uuid,
    claim_token      uuid,
    claimed_at       timestamptz,
    -- how many times a claim on it was reclaimed from a dead instance (poison detection)
    reclaims         integer NOT NULL DEFAULT 0,
    body_size        bigint NOT NULL,
    created_at       timestamptz NOT NULL DEFAULT now(),
    CHECK ((state = 'claimed') = (claim_token IS NOT NULL)),
    CHECK ((state = 'claimed') = (claimed_by IS NOT NULL)),
    CHECK ((seq IS NULL) = (order_key IS NULL)),
    CHECK (via_port OR cardinality(via_groups) > 0)
) WITH (fillfactor = 80, autovacuum_vacuum_scale_factor = 0.01, autovacuum_analyze_scale_factor = 0.02,
        autovacuum_vacuum_cost_delay = 0);
-- the claim index: ready work of a port in priority, due-time and id order
CREATE INDEX deliveries_claim ON deliveries (port_id, priority DESC, id) WHERE state = 'ready';
CREATE INDEX deliveries_message ON deliveries (message_id);
CREATE INDEX deliveries_claimed_by ON deliveries (claimed_by) WHERE state = 'claimed';
CREATE UNIQUE INDEX deliveries_ordered ON deliveries (port_id, order_key, seq) WHERE seq IS NOT NULL;

CREATE TABLE suspended_items (
    id           bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    message_id   uuid NOT NULL REFERENCES messages (id),
    kind         text NOT NULL CHECK (kind IN ('routing-failure', 'receive-failure', 'failed', 'failed-final')),
    resumable    boolean GENERATED ALWAYS AS (kind IN ('routing-failure', 'failed')) STORED,
    port_id      bigint REFERENCES send_ports (id),
    receive_location_id bigint REFERENCES receive_locations (id) ON DELETE SET NULL,
    via_port     boolean NOT NULL DEFAULT false,
    via_groups   bigint[] NOT NULL DEFAULT '{}',
    order_key    text,
    seq          bigint,
    reason       text NOT NULL,
    errors       jsonb NOT NULL DEFAULT '[]',
    suspended_at timestamptz NOT NULL DEFAULT now(),
    -- a failed delivery belongs to its port; routing and receive failures to no port
    CHECK (kind <> 'failed' OR port_id IS NOT NULL),
    CHECK (kind NOT IN ('routing-failure', 'receive-failure') OR port_id IS NULL)
);
CREATE INDEX suspended_items_port ON suspended_items (port_id);
CREATE INDEX suspended_items_message ON suspended_items (message_id);

-- A message's event history (SPEC §7.2), purged past retention by maintenance.
CREATE TABLE tracking_events (
    id          bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    message_id  uuid NOT NULL,
    at          timestamptz NOT NULL DEFAULT clock_timestamp(),
    event       text NOT NULL CHECK (event IN ('received', 'published', 'routing-failed', 'claimed',
                    'attempt-failed', 'retry-scheduled', 'moved-to-backup', 'suspended', 'resumed',
                    'terminated', 'delivered', 'reclaimed', 'forwarded')),
    port_id     bigint,
    instance_id uuid,
    detail      text
);
CREATE INDEX tracking_events_message ON tracking_events (message_id, id);
CREATE INDEX tracking_events_at ON tracking_events (at);
