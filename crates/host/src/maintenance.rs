//! Maintenance (orphan bodies, tracking retention, dedup expiry, forgotten instances) and
//! the group-wide gauges of `/metrics`.

use std::sync::Arc;
use std::time::Duration;

use mbx_messagebox::maintenance::MAINTENANCE_BATCH_MAX;
use mbx_messagebox::states::InstanceState;
use tracing::{error, warn};

use crate::{metrics_catalog, pause, Shared, MAINTENANCE_INTERVAL_S};

/// How often the group-wide gauges (spool, per-port backlog) are read for `/metrics`.
const METRICS_INTERVAL_S: u64 = 10;

pub(crate) async fn metrics_loop(shared: Arc<Shared>) {
    loop {
        // the group's gauges come from one instance: the live one with the lowest id
        let me = shared.instance_id();
        let reporter = match shared.mbx.instance_list().await {
            Ok(list) => list
                .iter()
                .filter(|i| i.state == InstanceState::Alive)
                .map(|i| i.id)
                .min()
                .is_none_or(|lowest| lowest == me),
            Err(_) => true,
        };
        match shared.mbx.stats().await {
            Ok(s) => metrics_catalog::port_gauges(&s, reporter),
            Err(e) => warn!(error = %e, "stats for metrics failed"),
        }
        // error reports this instance dropped for want of a subscriber
        metrics::counter!("mbx_error_reports_dropped_total")
            .absolute(shared.mbx.error_reports_dropped());
        if !pause(&shared, Duration::from_secs(METRICS_INTERVAL_S)).await {
            return;
        }
    }
}

pub(crate) async fn maintenance_loop(shared: Arc<Shared>) {
    loop {
        // the group's tracking retention (`mbx group set --tracking-retention`)
        let run = async {
            let retention = shared.mbx.tracking_retention_s().await?;
            shared
                .mbx
                .maintenance_run_with(
                    retention,
                    i64::try_from(shared.config.instance_retention.as_secs()).unwrap_or(i64::MAX),
                    MAINTENANCE_BATCH_MAX,
                )
                .await
        };
        if let Err(e) = run.await {
            error!(error = %e, "maintenance failed");
        }
        if !pause(&shared, Duration::from_secs(MAINTENANCE_INTERVAL_S)).await {
            return;
        }
    }
}
