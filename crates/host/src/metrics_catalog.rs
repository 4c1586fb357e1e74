//! Every metric the host exports, described once: `/metrics` carries a `# HELP` line for
//! each, and each counter exists (at 0) from the start — for the instance, and for a port
//! or location as soon as its loop starts — so a dashboard's `rate()` has a series before
//! the first event.

/// Counters without labels.
const INSTANCE_COUNTERS: &[(&str, &str)] = &[
    (
        "mbx_deliveries_reclaimed_total",
        "Deliveries of dead instances this instance put back",
    ),
    (
        "mbx_reclaim_passes_total",
        "Passes of this instance's reclaim of dead instances (it runs once the instance has heartbeated on time for the dead timeout)",
    ),
    (
        "mbx_http_connections_evicted_total",
        "HTTP receive connections closed at the connection cap to make room",
    ),
    (
        "mbx_http_connections_refused_total",
        "HTTP receive connections refused at the connection cap",
    ),
    (
        "mbx_late_replies_total",
        "Replies whose two-way client had left (timed out, gone), suspended as routing failures",
    ),
    (
        "mbx_error_reports_dropped_total",
        "Error reports (--route-failed) no subscriber took, dropped",
    ),
    (
        "mbx_forwarded_in_total",
        "Messages other groups forwarded into this one, published by this instance",
    ),
];

/// Counters by `port`.
const PORT_COUNTERS: &[(&str, &str)] = &[
    (
        "mbx_messages_delivered_total",
        "Messages delivered, by send port",
    ),
    (
        "mbx_delivery_failures_total",
        "Failed delivery attempts, by send port",
    ),
    (
        "mbx_lease_takeovers_total",
        "Leases of ordered ports this instance took, by send port",
    ),
    (
        "mbx_responses_published_total",
        "Responses a solicit-response port published, by send port",
    ),
    (
        "mbx_forwarded_total",
        "Messages forwarded into another group (mbx://), by send port",
    ),
    (
        "mbx_responses_unrouted_total",
        "Responses that found no subscriber and no waiting client (suspended), by send port",
    ),
];

/// Counters by `location`.
const LOCATION_COUNTERS: &[(&str, &str)] = &[
    (
        "mbx_messages_published_total",
        "Messages published, by receive location",
    ),
    (
        "mbx_receive_failures_total",
        "Messages refused by a receive pipeline, by receive location",
    ),
    (
        "mbx_receive_duplicates_total",
        "Messages dropped as already published (idempotent receive), by receive location",
    ),
    (
        "mbx_receive_claims_finished_total",
        "Claimed files found already published by their stopped claimant, deleted instead of received again, by receive location",
    ),
    (
        "mbx_request_timeouts_total",
        "Two-way requests answered 504 (no reply within the location's timeout), by receive location",
    ),
];

const GAUGES: &[(&str, &str)] = &[
    (
        "mbx_spool_messages",
        "Messages in the MessageBox (group-wide)",
    ),
    (
        "mbx_suspended_items",
        "Suspended items in the MessageBox (group-wide)",
    ),
    (
        "mbx_port_backlog",
        "Deliveries ready or held, by send port (group-wide)",
    ),
    (
        "mbx_port_retrying",
        "Deliveries waiting for a retry time, by send port (group-wide)",
    ),
    (
        "mbx_port_in_flight",
        "Deliveries claimed by an instance, by send port (group-wide)",
    ),
    (
        "mbx_port_suspended",
        "Suspended items, by send port (group-wide)",
    ),
    (
        "mbx_http_connections",
        "Open HTTP receive connections of this instance",
    ),
    (
        "mbx_publish_backlog",
        "Undelivered deliveries of messages this host published (publish throttle input)",
    ),
    (
        "mbx_inflight_messages",
        "Messages in flight on this instance (delivery throttle input)",
    ),
    (
        "mbx_throttled",
        "1 while this instance is throttled, by kind (publish, database-size, inflight)",
    ),
    (
        "mbx_orchestration_instances",
        "Orchestration instances that have not ended, by orchestration and state (group-wide)",
    ),
    (
        "mbx_orchestration_due",
        "Orchestration instances runnable now and not yet claimed (a message arrived, a timer is due), by orchestration (group-wide)",
    ),
    (
        "mbx_database_size_bytes",
        "Size of the MessageBox database (pg_database_size, read every 5 s; database-size throttle input)",
    ),
];

/// Counters by `orchestration`.
const ORCHESTRATION_COUNTERS: &[(&str, &str)] = &[(
    "mbx_orchestration_steps_total",
    "Orchestration steps this instance committed, by orchestration",
)];

const HISTOGRAMS: &[(&str, &str)] = &[
    (
        "mbx_orchestration_step_latency_seconds",
        "Time from an orchestration instance becoming runnable (its activating or correlated message published, its timer due) to its step's commit, by orchestration and cause (activation, resumed)",
    ),
    (
        "mbx_delivery_latency_seconds",
        "Time from publish to confirmed delivery, by send port",
    ),
    (
        "mbx_send_batch_seconds",
        "Time a send adapter took for one batch, by send port",
    ),
];

/// Describes every metric and registers the instance's counters at 0.
pub(crate) fn describe() {
    for (name, help) in INSTANCE_COUNTERS
        .iter()
        .chain(PORT_COUNTERS)
        .chain(LOCATION_COUNTERS)
        .chain(ORCHESTRATION_COUNTERS)
    {
        metrics::describe_counter!(*name, *help);
    }
    for (name, help) in GAUGES {
        metrics::describe_gauge!(*name, *help);
    }
    for (name, help) in HISTOGRAMS {
        metrics::describe_histogram!(*name, *help);
    }
    for (name, _) in INSTANCE_COUNTERS {
        metrics::counter!(*name).increment(0);
    }
}

/// Registers a send port's counters at 0 (its loop starts on this instance).
pub(crate) fn port_started(port: &str) {
    for (name, _) in PORT_COUNTERS {
        metrics::counter!(*name, "port" => port.to_owned()).increment(0);
    }
}

/// Registers a receive location's counters at 0 (it starts on this instance).
pub(crate) fn location_started(location: &str) {
    for (name, _) in LOCATION_COUNTERS {
        metrics::counter!(*name, "location" => location.to_owned()).increment(0);
    }
}

/// Sets the group-wide gauges from one stats snapshot. One instance of the group reports
/// them (`reporter`: the live instance with the lowest id); every other one reports 0,
/// so a `sum()` over the instances' scrapes counts each message once, as does `max()`.
pub(crate) fn port_gauges(stats: &mbx_messagebox::stats::Stats, reporter: bool) {
    let v = |n: i64| if reporter { n as f64 } else { 0.0 };
    metrics::gauge!("mbx_spool_messages").set(v(stats.spool_messages));
    metrics::gauge!("mbx_suspended_items").set(v(stats.suspended_total));
    for p in &stats.ports {
        let port = p.name.clone();
        metrics::gauge!("mbx_port_backlog", "port" => port.clone()).set(v(p.backlog));
        metrics::gauge!("mbx_port_retrying", "port" => port.clone()).set(v(p.retrying));
        metrics::gauge!("mbx_port_in_flight", "port" => port.clone()).set(v(p.in_flight));
        metrics::gauge!("mbx_port_suspended", "port" => port).set(v(p.suspended));
    }
    for o in &stats.orchestrations {
        let states = [
            ("pending", o.pending),
            ("running", o.running),
            ("waiting", o.waiting),
            ("suspended", o.suspended),
            ("faulted", o.faulted),
        ];
        for (state, n) in states {
            metrics::gauge!("mbx_orchestration_instances", "orchestration" => o.name.clone(), "state" => state)
                .set(v(n));
        }
        metrics::gauge!("mbx_orchestration_due", "orchestration" => o.name.clone()).set(v(o.due));
    }
}

/// An orchestration step committed: `latency` from when its instance became runnable.
pub(crate) fn orchestration_step(orchestration: &str, activation: bool, latency: Option<f64>) {
    metrics::counter!("mbx_orchestration_steps_total", "orchestration" => orchestration.to_owned())
        .increment(1);
    if let Some(l) = latency {
        let cause = if activation { "activation" } else { "resumed" };
        metrics::histogram!(
            "mbx_orchestration_step_latency_seconds",
            "orchestration" => orchestration.to_owned(),
            "cause" => cause
        )
        .record(l.max(0.0));
    }
}
