-- The console and `mbx stats --watch`. Each instance writes, with its heartbeat, how many
-- messages it has delivered per send port since it started ({"<port id>": n}); a rate is
-- the difference between two readings of the same instance, so the hot path writes
-- nothing more. A lease records when it last changed hands (an ordered port's last
-- takeover).
ALTER TABLE host_instances ADD COLUMN delivered jsonb NOT NULL DEFAULT '{}';
ALTER TABLE leases ADD COLUMN acquired_at timestamptz;
