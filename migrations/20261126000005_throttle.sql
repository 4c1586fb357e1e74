-- Throttling (SPEC §9): what an instance is throttled on, for `mbx status`; NULL when it
-- is not. 'publish' = its host's publish throttle (receive locations slow down),
-- 'inflight' = its delivery throttle (it claims no more), or both, comma-separated.
ALTER TABLE host_instances ADD COLUMN throttle text
    CHECK (throttle IN ('publish', 'inflight', 'publish,inflight'));
