-- An orchestration instance's history (`mbx orchestration instance history`): each step's
-- events, written in the step's own transaction — the messages that activated it or that
-- a listen consumed, the messages it published, and how the step ended (waiting, calling,
-- completed, faulted, with the task it stands on) — and an operator's suspend, resume
-- and cancel. Kept for the group's tracking retention, like tracking events; ended
-- instances are purged with them.
CREATE TABLE orchestration_events (
    id          bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    instance_id uuid NOT NULL,
    at          timestamptz NOT NULL DEFAULT clock_timestamp(),
    -- the instance's step count when it happened
    step        bigint NOT NULL,
    event       text NOT NULL CHECK (event IN ('activated', 'consumed', 'published', 'waiting',
                                               'calling', 'completed', 'faulted', 'suspended',
                                               'resumed', 'cancelled')),
    task        text,
    message_id  uuid,
    detail      text
);
CREATE INDEX orchestration_events_instance ON orchestration_events (instance_id, id);
CREATE INDEX orchestration_events_at ON orchestration_events (at);
CREATE INDEX orchestration_instances_ended ON orchestration_instances (ended_at)
    WHERE ended_at IS NOT NULL;
