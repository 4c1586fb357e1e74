-- Request-response. A two-way receive publishes its request and, in the same
-- transaction, an instance subscription (`subscriptions` of kind 'instance', keyed by the
-- request's correlation token, written in migration 1): the first message published with
-- that token (and not itself a request) takes the subscription — deleted by that publish,
-- so only one answer reaches the client — and becomes an instance delivery here, read by
-- the waiting instance when `mbx_reply` names it. A reply whose client has left, or whose
-- instance died, becomes a routing failure with the reason (never dropped silently).
CREATE TABLE instance_deliveries (
    message_id        uuid NOT NULL,
    instance_id       uuid NOT NULL,
    correlation_token text NOT NULL,
    created_at        timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (instance_id, message_id)
);
CREATE INDEX instance_deliveries_message ON instance_deliveries (message_id);
CREATE INDEX subscriptions_instance ON subscriptions (instance_id) WHERE kind = 'instance';

-- A two-way client answered 504 leaves a trace on its request ('request-timed-out').
ALTER TABLE tracking_events DROP CONSTRAINT tracking_events_event_check;
ALTER TABLE tracking_events ADD CONSTRAINT tracking_events_event_check
    CHECK (event IN ('received', 'published', 'routing-failed', 'claimed',
                     'attempt-failed', 'retry-scheduled', 'moved-to-backup', 'suspended', 'resumed',
                     'terminated', 'delivered', 'reclaimed', 'forwarded', 'duplicate-dropped',
                     'request-timed-out'));

-- Failed-message routing on receive ports: a receive failure or a routing
-- failure of a message received through the port also publishes an error report.
ALTER TABLE receive_ports ADD COLUMN route_failed boolean NOT NULL DEFAULT false;
