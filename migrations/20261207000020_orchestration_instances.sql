-- Orchestration instances (docs/orchestrations.md): each one run of an orchestration,
-- its whole state in `data` (the interpreter's saved state, written at every
-- persistence point together with what the step consumed and published).
--
-- An instance is *runnable* when `runnable_at` is set and due: a message was held for
-- it, a timer or a listen's timeout is due, a call was answered, or it was just
-- activated. A waiting instance with nothing due has `runnable_at` NULL and costs one
-- row: no host memory, task or connection. A host instance claims runnable instances
-- (`claimed_by`, `claim_token`, fencing the step's commit); a dead host's claims are
-- given back by the reclaim of dead instances. `pokes` counts the messages held for it:
-- a step that commits while one arrived leaves the instance runnable.
CREATE TABLE orchestration_instances (
    id               uuid PRIMARY KEY,
    orchestration_id bigint NOT NULL REFERENCES orchestrations (id),
    version          text NOT NULL,
    state            text NOT NULL CHECK (state IN ('pending', 'running', 'waiting', 'suspended',
                                                    'faulted', 'cancelled', 'completed')),
    -- the interpreter's state; NULL until the first step activated it
    data             jsonb,
    -- the correlation values that identify it (`{"Order.Id": "A-1"}`), for listing
    correlation      jsonb NOT NULL DEFAULT '{}',
    runnable_at      timestamptz,
    claimed_by       uuid,
    claim_token      uuid,
    pokes            bigint NOT NULL DEFAULT 0,
    steps            bigint NOT NULL DEFAULT 0,
    -- a faulted instance's error (the DSL's: type, status, title, detail, instance)
    error            jsonb,
    created_at       timestamptz NOT NULL DEFAULT now(),
    updated_at       timestamptz NOT NULL DEFAULT now(),
    ended_at         timestamptz,
    FOREIGN KEY (orchestration_id, version) REFERENCES orchestration_versions (orchestration_id, version)
);
CREATE INDEX orchestration_instances_runnable ON orchestration_instances (runnable_at)
    WHERE runnable_at IS NOT NULL AND claimed_by IS NULL;
CREATE INDEX orchestration_instances_claimed ON orchestration_instances (claimed_by)
    WHERE claimed_by IS NOT NULL;
CREATE INDEX orchestration_instances_orchestration ON orchestration_instances (orchestration_id, state);

-- What an instance subscribes to by value: a message whose properties give `key` (the
-- canonical JSON of the exact values of one of the orchestration's shapes) is held for
-- it. An activation's key (`activation`) is unique per orchestration while its instance
-- lives: the one instance of a convoy; a second activating message with the same values
-- goes to it, and concurrent publishes of two such messages serialise on this index.
CREATE TABLE orchestration_subscriptions (
    orchestration_id bigint NOT NULL REFERENCES orchestrations (id),
    key              text NOT NULL,
    -- no foreign key: the convoy key is taken before its instance's row is inserted (in
    -- the same transaction); an instance's rows go when it ends
    instance_id      uuid NOT NULL,
    activation       boolean NOT NULL DEFAULT false,
    PRIMARY KEY (orchestration_id, key, instance_id)
);
CREATE UNIQUE INDEX orchestration_subscriptions_convoy ON orchestration_subscriptions (orchestration_id, key)
    WHERE activation;
CREATE INDEX orchestration_subscriptions_instance ON orchestration_subscriptions (instance_id);

-- The messages routed to an instance, in arrival order: held until a listen consumes
-- them, then kept (`consumed`) until the instance ends, so a later step can republish
-- one as it is and the instance's history shows them. A message is not deleted while a
-- row here names it.
CREATE TABLE orchestration_inbox (
    instance_id uuid NOT NULL REFERENCES orchestration_instances (id) ON DELETE CASCADE,
    message_id  uuid NOT NULL,
    seq         bigint GENERATED ALWAYS AS IDENTITY,
    activating  boolean NOT NULL DEFAULT false,
    consumed    boolean NOT NULL DEFAULT false,
    PRIMARY KEY (instance_id, message_id)
);
CREATE INDEX orchestration_inbox_message ON orchestration_inbox (message_id);

-- The shapes routing computes keys for: per version, each sorted list of the property
-- names one of its event filters fixes (its `with` and its correlations), and the
-- activation's exact `with` values (routing never reads a document).
ALTER TABLE orchestration_versions
    ADD COLUMN shapes jsonb NOT NULL DEFAULT '[]' CHECK (jsonb_typeof(shapes) = 'array');

-- A message routed to an instance that ended without taking it, and that activates no
-- new instance, is a suspended item of kind `zombie` naming the instance.
ALTER TABLE suspended_items DROP CONSTRAINT suspended_items_kind_check;
ALTER TABLE suspended_items ADD CONSTRAINT suspended_items_kind_check
    CHECK (kind IN ('routing-failure', 'receive-failure', 'failed', 'failed-final', 'zombie'));
ALTER TABLE suspended_items ADD COLUMN orchestration_instance_id uuid;
-- a zombie is resumed as a routing failure is: routed again
ALTER TABLE suspended_items DROP COLUMN resumable;
ALTER TABLE suspended_items ADD COLUMN resumable boolean
    GENERATED ALWAYS AS (kind IN ('routing-failure', 'failed', 'zombie')) STORED;
