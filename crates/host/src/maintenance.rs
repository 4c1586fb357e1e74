//! Maintenance (orphan bodies, tracking retention, dedup expiry, forgotten instances) and
//! the group-wide gauges of `/metrics`.

use std::time::Duration;

use mbx_messagebox::maintenance::MAINTENANCE_BATCH_MAX;
use mbx_messagebox::states::InstanceState;
use tracing::{error, warn};

use crate::instance::Instance;
use crate::{metrics_catalog, MAINTENANCE_INTERVAL_S};

/// How often the group-wide gauges (spool, per-port backlog) are read for `/metrics`.
const METRICS_INTERVAL_S: u64 = 10;

pub(crate) async fn metrics_loop(instance: Instance) {
    loop {
        // the group's gauges come from one instance: the live one with the lowest id
        let me = instance.id();
        let reporter = match instance.mbx().instance_list().await {
            Ok(list) => list
                .iter()
                .filter(|i| i.state == InstanceState::Alive)
                .map(|i| i.id)
                .min()
                .is_none_or(|lowest| lowest == me),
            Err(_) => true,
        };
        match instance.mbx().stats().await {
            Ok(s) => metrics_catalog::port_gauges(&s, reporter),
            Err(e) => warn!(error = %e, "stats for metrics failed"),
        }
        // error reports this instance dropped for want of a subscriber
        metrics::counter!("mbx_error_reports_dropped_total")
            .absolute(instance.mbx().error_reports_dropped());
        if !instance
            .pause(Duration::from_secs(METRICS_INTERVAL_S))
            .await
        {
            return;
        }
    }
}

pub(crate) async fn maintenance_loop(instance: Instance) {
    loop {
        // the group's tracking retention (`mbx group set --tracking-retention`)
        let run = async {
            let retention = instance.mbx().tracking_retention_s().await?;
            instance
                .mbx()
                .maintenance_run_with(
                    retention,
                    i64::try_from(instance.config().instance_retention.as_secs())
                        .unwrap_or(i64::MAX),
                    MAINTENANCE_BATCH_MAX,
                )
                .await
        };
        if let Err(e) = run.await {
            error!(error = %e, "maintenance failed");
        }
        if !instance
            .pause(Duration::from_secs(MAINTENANCE_INTERVAL_S))
            .await
        {
            return;
        }
    }
}
