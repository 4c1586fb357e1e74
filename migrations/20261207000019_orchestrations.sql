-- Orchestrations: durable business processes, each a Serverless Workflow document in the
-- mbx profile (docs/orchestrations.md). A definition is versioned: every version is kept
-- (running instances finish on the version they started on), one is current and takes
-- new activations. A version's document never changes: the same version with other
-- content is refused, so `digest` (SHA-256 of the document's canonical JSON: keys
-- sorted, no whitespace) tells a re-apply of the same definition from a changed one.
-- `activation` holds the activation's event filters as the MessageBox's normal-form
-- filters (`[{"filter": {"any_of": [...]}, "correlate": ["Order.Id"]}]`), compiled
-- against the property declarations when the version was stored, so routing never
-- reads a document.
CREATE TABLE orchestrations (
    id              bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    name            text NOT NULL UNIQUE CHECK (name ~ '^[A-Za-z0-9_][A-Za-z0-9_.-]*$'),
    -- the document's namespace
    application     text NOT NULL CHECK (application ~ '^[A-Za-z0-9_][A-Za-z0-9_.-]*$'),
    host_id         bigint NOT NULL REFERENCES hosts (id),
    -- one host instance at a time per correlation bucket (not run yet: always false)
    ordered         boolean NOT NULL DEFAULT false,
    buckets         integer CHECK (buckets BETWEEN 1 AND 1024),
    state           text NOT NULL DEFAULT 'enabled' CHECK (state IN ('enabled', 'disabled')),
    current_version text NOT NULL,
    created_at      timestamptz NOT NULL DEFAULT now(),
    updated_at      timestamptz NOT NULL DEFAULT now(),
    CHECK (buckets IS NULL OR ordered)
);

CREATE TABLE orchestration_versions (
    orchestration_id bigint NOT NULL REFERENCES orchestrations (id) ON DELETE CASCADE,
    version          text NOT NULL CHECK (version <> ''),
    document         jsonb NOT NULL,
    digest           text NOT NULL CHECK (digest ~ '^[0-9a-f]{64}$'),
    activation       jsonb NOT NULL CHECK (jsonb_typeof(activation) = 'array'),
    created_at       timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (orchestration_id, version)
);

-- The current version is one of the orchestration's versions. Deferred: a new
-- orchestration's row and its first version are inserted in one transaction.
ALTER TABLE orchestrations ADD CONSTRAINT orchestrations_current_version
    FOREIGN KEY (id, current_version) REFERENCES orchestration_versions (orchestration_id, version)
    DEFERRABLE INITIALLY DEFERRED;

CREATE INDEX orchestrations_host ON orchestrations (host_id);

-- Orchestrations are configuration: hosts pick up a new version, an enable or a disable
-- at once.
CREATE TRIGGER orchestrations_notify AFTER INSERT OR UPDATE OR DELETE ON orchestrations
    FOR EACH STATEMENT EXECUTE FUNCTION mbx_notify_config();
