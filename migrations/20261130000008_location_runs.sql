-- Whether each enabled receive location runs on each instance of its host, and if not why
-- (issue 12: an https:/// location on an instance without TLS; issue 13: an HTTP listener
-- whose port is taken, a secret that cannot be read). Written by the instance when the
-- location starts or fails to, removed when it stops; `mbx status` shows it for live
-- instances. Not on the hot path.
CREATE TABLE receive_location_runs (
    location_id bigint NOT NULL REFERENCES receive_locations (id) ON DELETE CASCADE,
    instance_id uuid NOT NULL REFERENCES host_instances (id) ON DELETE CASCADE,
    running     boolean NOT NULL,
    problem     text CHECK (running = (problem IS NULL)),
    since       timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (location_id, instance_id)
);
CREATE INDEX receive_location_runs_instance ON receive_location_runs (instance_id);
