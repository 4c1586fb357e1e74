-- Instance events at the host's tracking level (`mbx host set --tracking`): `all` writes
-- every step's events to orchestration_events; `off` writes none; `failures` (the
-- default) keeps a running instance's events in its own row (`trail`, written with the
-- step's update, no row of its own) and writes them out only if the instance faults or
-- an operator suspends it (`tracked`: from then on every event is written), else only
-- its final state. `mbx orchestration instance history` shows the trail too.
ALTER TABLE orchestration_instances ADD COLUMN trail jsonb;
ALTER TABLE orchestration_instances ADD COLUMN tracked boolean NOT NULL DEFAULT false;
