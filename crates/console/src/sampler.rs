//! Snapshots of the group's numbers, taken in the background every 2 s (less often when
//! a snapshot is slow to take), and the last 15 minutes of each port's backlog and
//! delivery rate for the charts. Pages read the latest snapshot; none counts a table.

use std::collections::{HashMap, VecDeque};
use std::sync::Arc;
use std::time::{Duration, Instant};

use chrono::{DateTime, Utc};
use mbx_messagebox::config::{Host, SendPort};
use mbx_messagebox::instances::Instance;
use mbx_messagebox::receive::{LocationRun, ReceiveLocation};
use mbx_messagebox::stats::{DeliveredReading, Stats};
use mbx_messagebox::throttle::GroupSettings;
use mbx_messagebox::MessageBox;

/// How long the charts look back.
pub const HISTORY: Duration = Duration::from_secs(15 * 60);
/// The shortest time between two snapshots.
pub const PERIOD: Duration = Duration::from_secs(2);

/// One port's numbers at one time (a chart point).
#[derive(Debug, Clone, Copy)]
pub struct Point {
    pub at: DateTime<Utc>,
    /// Waiting, retrying and in flight.
    pub backlog: i64,
    /// Delivered per second since the previous snapshot.
    pub rate: f64,
}

/// The group at one time.
pub struct Snapshot {
    pub at: DateTime<Utc>,
    /// How long taking it took.
    pub took: Duration,
    pub stats: Stats,
    pub spool_bytes: i64,
    /// The database's size and the group's threshold on it.
    pub group: GroupSettings,
    pub hosts: Vec<Host>,
    pub instances: Vec<Instance>,
    pub locations: Vec<ReceiveLocation>,
    /// Where each enabled location runs, or why it cannot (`mbx status` shows the same).
    pub runs: Vec<LocationRun>,
    pub ports: Vec<SendPort>,
    /// Delivered per second and port since the previous snapshot (empty at first).
    pub rates: HashMap<String, f64>,
}

pub struct Samples {
    pub latest: Arc<Snapshot>,
    reading: DeliveredReading,
    pub history: HashMap<String, VecDeque<Point>>,
}

async fn take(
    mbx: &MessageBox,
    previous: Option<&DeliveredReading>,
) -> mbx_messagebox::Result<(Snapshot, DeliveredReading)> {
    let started = Instant::now();
    let stats = mbx.stats().await?;
    let (_, spool_bytes) = mbx.spool_size().await?;
    let group = mbx.group_settings().await?;
    let hosts = mbx.host_list().await?;
    let instances = mbx.instance_list().await?;
    let locations = mbx.receive_location_list().await?;
    let runs = mbx.location_runs().await?;
    let ports = mbx.send_port_list().await?;
    let reading = mbx.delivered_reading().await?;
    let rates = previous.map(|p| reading.rates_since(p)).unwrap_or_default();
    Ok((
        Snapshot {
            at: reading.at,
            took: started.elapsed(),
            stats,
            spool_bytes,
            group,
            hosts,
            instances,
            locations,
            runs,
            ports,
            rates,
        },
        reading,
    ))
}

impl Samples {
    /// The first snapshot, before the console serves.
    pub async fn first(mbx: &MessageBox) -> mbx_messagebox::Result<Samples> {
        let (snapshot, reading) = take(mbx, None).await?;
        let mut samples = Samples {
            latest: Arc::new(snapshot),
            reading,
            history: HashMap::new(),
        };
        samples.record();
        Ok(samples)
    }

    fn record(&mut self) {
        let s = &self.latest;
        let horizon = s.at - chrono::Duration::from_std(HISTORY).unwrap_or_default();
        for p in &s.stats.ports {
            let points = self.history.entry(p.name.clone()).or_default();
            points.push_back(Point {
                at: s.at,
                backlog: p.backlog + p.retrying + p.in_flight,
                rate: s.rates.get(&p.name).copied().unwrap_or(0.0),
            });
            while points.front().is_some_and(|f| f.at < horizon) {
                points.pop_front();
            }
        }
        // ports deleted meanwhile
        let live: std::collections::HashSet<&str> =
            s.stats.ports.iter().map(|p| p.name.as_str()).collect();
        self.history.retain(|name, _| live.contains(name.as_str()));
    }
}

/// Takes a snapshot every [`PERIOD`], or every four times what the last one took if that
/// is longer, so a slow database is not kept busy by the console.
pub async fn run(app: Arc<crate::App>) {
    loop {
        let took = app
            .samples
            .read()
            .map(|s| s.latest.took)
            .unwrap_or_default();
        tokio::time::sleep(PERIOD.max(took * 4)).await;
        let previous = match app.samples.read() {
            Ok(s) => s.reading.clone(),
            Err(_) => return,
        };
        match take(&app.mbx, Some(&previous)).await {
            Ok((snapshot, reading)) => {
                if let Ok(mut s) = app.samples.write() {
                    s.latest = Arc::new(snapshot);
                    s.reading = reading;
                    s.record();
                }
            }
            Err(e) => {
                tracing::warn!(error = %e, "console snapshot failed; showing the previous one")
            }
        }
    }
}
