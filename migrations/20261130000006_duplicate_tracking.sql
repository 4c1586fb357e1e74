-- Idempotent receive is never silent (SPEC §3 item 6): a message dropped because its
-- source id was published within the dedup window is tracked on the message that was
-- published, as 'duplicate-dropped'. The CHECK grows by that one event; every existing row
-- satisfies the new list, so it is added NOT VALID (no scan of a large history).
ALTER TABLE tracking_events DROP CONSTRAINT tracking_events_event_check;
ALTER TABLE tracking_events ADD CONSTRAINT tracking_events_event_check
    CHECK (event IN ('received', 'published', 'routing-failed', 'claimed',
                     'attempt-failed', 'retry-scheduled', 'moved-to-backup', 'suspended', 'resumed',
                     'terminated', 'delivered', 'reclaimed', 'forwarded', 'duplicate-dropped'))
    NOT VALID;
