-- Operator commands are idempotent (issue 12): `mbx suspended resume|terminate ID` run again
-- on an item already resumed or terminated says so and succeeds, while an id that never
-- existed is still refused. Resume and terminate record what became of each item here, in
-- the transaction that removes it; maintenance forgets records older than the tracking
-- retention.
CREATE TABLE suspended_outcomes (
    item_id bigint PRIMARY KEY,
    outcome text NOT NULL CHECK (outcome IN ('resumed', 'terminated')),
    at timestamptz NOT NULL DEFAULT clock_timestamp()
);
CREATE INDEX suspended_outcomes_at ON suspended_outcomes (at);
