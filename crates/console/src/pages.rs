//! The pages (GET): overview, ordered ports, suspended items and one item, tracking.

use std::collections::HashMap;
use std::sync::Arc;

use axum::body::Body;
use axum::extract::{Path, RawQuery, State};
use axum::http::header;
use axum::response::{IntoResponse, Response};
use maud::{html, Markup};
use mbx_messagebox::states::PortState;
use mbx_messagebox::stats::PortStats;
use mbx_messagebox::suspended::{Kind, Selector, SuspendedItem};

use crate::auth::Ctx;
use crate::preview::{self, PREVIEW_BYTES};
use crate::sampler::{Point, Snapshot};
use crate::view::{action, ago, chart, csrf_input, page, q, seg, Nav};
use crate::{App, ConsoleError};

/// Send ports per overview page.
const PORTS_PER_PAGE: usize = 100;
/// Receive locations the overview lists at most.
const LOCATIONS_SHOWN: usize = 200;
/// Suspended items per page.
const ITEMS_PER_PAGE: i64 = 50;
/// A filtered count stops here ("more than").
const COUNT_CAP: i64 = 1_000_000;

pub(crate) fn params(raw: Option<&str>) -> HashMap<String, String> {
    raw.map(|r| {
        form_urlencoded::parse(r.as_bytes())
            .map(|(k, v)| (k.into_owned(), v.into_owned()))
            .filter(|(_, v)| !v.is_empty())
            .collect()
    })
    .unwrap_or_default()
}

fn short(id: &uuid::Uuid) -> String {
    id.to_string()[..8].to_owned()
}

/// Bytes as MiB, or GiB from 1 GiB on, with one decimal.
fn size_text(bytes: i64) -> String {
    const MIB: f64 = 1024.0 * 1024.0;
    let b = bytes as f64;
    if b >= 1024.0 * MIB {
        format!("{:.1} GiB", b / (1024.0 * MIB))
    } else {
        format!("{:.1} MiB", b / MIB)
    }
}

pub(crate) async fn overview(
    State(app): State<Arc<App>>,
    ctx: Ctx,
    RawQuery(raw): RawQuery,
) -> Response {
    let raw = raw.unwrap_or_default();
    let body = html! {
        h1 { "Overview" }
        div #live data-live=(format!("/live/overview?{raw}")) { (overview_body(&app, &ctx, &raw)) }
    };
    page(&ctx, "Overview", Nav::Overview, body)
}

/// The overview's live part, fetched again every 2 s by the page's script.
pub(crate) async fn overview_live(
    State(app): State<Arc<App>>,
    ctx: Ctx,
    RawQuery(raw): RawQuery,
) -> Markup {
    overview_body(&app, &ctx, &raw.unwrap_or_default())
}

fn overview_body(app: &App, ctx: &Ctx, raw: &str) -> Markup {
    let p = params(Some(raw));
    let Ok(snap) = app.samples.read().map(|s| s.latest.clone()) else {
        return html! { p.error { "the console's snapshot is unavailable" } };
    };
    let return_to = if raw.is_empty() {
        "/".to_owned()
    } else {
        format!("/?{raw}")
    };
    let started = app.started;
    html! {
        (overview_summary(&snap))
        (hosts_section(&snap))
        (send_ports_section(app, ctx, &snap, &p, &return_to))
        (receive_locations_section(ctx, &snap, &return_to))
        p.muted { "Refreshed every 2 s. Charts: backlog (area) and delivered/s (line) over the last 15 minutes, from the console's own snapshots since it started (" (ago(started, snap.at)) ")." }
    }
}

/// The overview's first line: the spool, the database's size, the suspended items.
fn overview_summary(snap: &Snapshot) -> Markup {
    html! {
        p.summary {
            "As of " time datetime=(snap.at.to_rfc3339()) { (snap.at.format("%H:%M:%S UTC")) }
            " · spool " strong #spool { (snap.stats.spool_messages) } " message(s), "
            (format!("{:.1}", snap.spool_bytes as f64 / 1048576.0)) " MiB on disk"
            " · database " strong #database-size { (size_text(snap.group.database_size)) }
            @match snap.group.throttle_database_size {
                Some(t) => span #database-threshold { " (receive stops at " (size_text(t)) ")" },
                None => span.muted #database-threshold { " (no size throttle)" },
            }
            " · suspended " a href="/suspended" { strong #suspended-total { (snap.stats.suspended_total) } }
            span.muted { " (snapshot took " (snap.took.as_millis()) " ms)" }
        }
    }
}

fn hosts_section(snap: &Snapshot) -> Markup {
    html! {
        section {
            h2 { "Hosts and instances" }
            table {
                thead { tr { th { "Host" } th { "Instance" } th { "Machine / pid" } th { "State" } th { "Throttled" } th { "Last heartbeat" } th { "Version" } } }
                tbody {
                    @for h in &snap.hosts {
                        @let of_host: Vec<_> = snap.instances.iter().filter(|i| i.host == h.name).collect();
                        @if of_host.is_empty() {
                            tr { td { (h.name) } td.muted colspan="6" { "no instance has run" } }
                        }
                        @for i in of_host {
                            tr {
                                td { (h.name) }
                                td.mono title=(i.id) { (short(&i.id)) }
                                td { (i.machine) " / " (i.pid) }
                                td { span class=(format!("state {}", i.state)) { (i.state) } }
                                td { @match &i.throttle { Some(t) => span.state.warn { "yes: " (t) }, None => "no" } }
                                td { (format!("{:.0} s ago", i.heartbeat_age_s)) }
                                td { (i.version) }
                            }
                        }
                    }
                }
            }
        }
    }
}

/// The send ports whose name holds the `q` parameter, a page of them at a time.
fn send_ports_section(
    app: &App,
    ctx: &Ctx,
    snap: &Snapshot,
    p: &HashMap<String, String>,
    return_to: &str,
) -> Markup {
    let name_filter = p.get("q").map(|s| s.to_lowercase());
    let page_no: usize = p
        .get("page")
        .and_then(|s| s.parse().ok())
        .unwrap_or(1)
        .max(1);
    let matching: Vec<_> = snap
        .stats
        .ports
        .iter()
        .filter(|p| {
            name_filter
                .as_ref()
                .is_none_or(|f| p.name.to_lowercase().contains(f))
        })
        .collect();
    let pages = matching.len().div_ceil(PORTS_PER_PAGE).max(1);
    let page_no = page_no.min(pages);
    let shown: Vec<&PortStats> = matching
        .iter()
        .skip((page_no - 1) * PORTS_PER_PAGE)
        .take(PORTS_PER_PAGE)
        .copied()
        .collect();
    let history = chart_points(app, &shown);
    let addresses: HashMap<&str, (&str, Option<&str>)> = snap
        .ports
        .iter()
        .map(|p| (p.name.as_str(), (p.host.as_str(), p.address.as_deref())))
        .collect();
    html! {
        section {
            h2 { "Send ports " span.muted { "(" (matching.len()) ")" } }
            form.filters method="get" action="/" {
                input type="search" name="q" placeholder="name contains" value=[p.get("q")];
                " " button type="submit" { "Filter" }
            }
            table #send-ports {
                thead { tr {
                    th { "Send port" } th { "Host" } th { "Address" } th { "State" } th.num { "Backlog" } th.num { "Retrying" }
                    th.num { "In flight" } th.num { "Suspended" } th.num { "Delivered/min" } th { "Last 15 min" } th { "Actions" }
                } }
                tbody {
                    @for port in shown {
                        @let (host, address) = addresses.get(port.name.as_str()).copied().unwrap_or(("", None));
                        (send_port_row(ctx, snap, port, (host, address), &history, return_to))
                    }
                }
            }
            @if pages > 1 {
                nav.pages {
                    @for n in 1..=pages {
                        @if n == page_no { strong { (n) } } @else {
                            a href=(format!("/?page={n}{}", p.get("q").map(|f| format!("&q={}", q(f))).unwrap_or_default())) { (n) }
                        }
                        " "
                    }
                }
            }
        }
    }
}

/// The chart points of the ports `shown`, and of no other.
fn chart_points<'a>(app: &App, shown: &[&'a PortStats]) -> HashMap<&'a str, Vec<Point>> {
    app.samples
        .read()
        .map(|s| {
            shown
                .iter()
                .filter_map(|p| {
                    s.history
                        .get(&p.name)
                        .map(|h| (p.name.as_str(), h.iter().copied().collect()))
                })
                .collect()
        })
        .unwrap_or_default()
}

fn send_port_row(
    ctx: &Ctx,
    snap: &Snapshot,
    port: &PortStats,
    (host, address): (&str, Option<&str>),
    history: &HashMap<&str, Vec<Point>>,
    return_to: &str,
) -> Markup {
    let href = format!("/send-ports/{}", seg(&port.name));
    html! {
        tr data-port=(port.name) {
            td { (port.name) }
            td { (host) }
            td.address { (address.unwrap_or("(dynamic)")) }
            td { span class=(format!("state {}", port.state)) data-field="state" { (port.state) } }
            td.num data-field="backlog" { (port.backlog) }
            td.num { (port.retrying) }
            td.num { (port.in_flight) }
            td.num { @if port.suspended > 0 { a href=(format!("/suspended?port={}", q(&port.name))) { (port.suspended) } } @else { "0" } }
            td.num { (format!("{:.0}", snap.rates.get(&port.name).copied().unwrap_or(0.0) * 60.0)) }
            td { (chart(history.get(port.name.as_str()).map(Vec::as_slice).unwrap_or_default())) }
            td.actions {
                @match port.state {
                    PortState::Unenlisted => { (action(ctx, &format!("{href}/enlist"), "Enlist", return_to, false)) }
                    PortState::Stopped => {
                        (action(ctx, &format!("{href}/start"), "Start", return_to, false))
                        (action(ctx, &format!("{href}/unenlist"), "Unenlist", return_to, true))
                    }
                    PortState::Started => { (action(ctx, &format!("{href}/stop"), "Stop", return_to, true)) }
                    PortState::Suspended => {
                        (action(ctx, &format!("{href}/resume"), "Resume", return_to, false))
                        (action(ctx, &format!("{href}/skip"), "Skip", return_to, true))
                    }
                }
            }
        }
    }
}

fn receive_locations_section(ctx: &Ctx, snap: &Snapshot, return_to: &str) -> Markup {
    html! {
        section {
            h2 { "Receive locations " span.muted { "(" (snap.locations.len()) ")" } }
            table #receive-locations {
                thead { tr { th { "Receive location" } th { "Receive port" } th { "Host" } th { "Address" } th { "State" } th { "Actions" } } }
                tbody {
                    @for l in snap.locations.iter().take(LOCATIONS_SHOWN) {
                        @let href = format!("/receive-locations/{}", seg(&l.name));
                        tr data-location=(l.name) {
                            td { (l.name) } td { (l.port) } td { (l.host) } td.address { (l.address) }
                            td {
                                @if l.enabled { span.state.started { "enabled" } } @else { span.state.stopped { "disabled" } }
                                @for r in snap.runs.iter().filter(|r| r.location == l.name) {
                                    @if let Some(problem) = &r.problem {
                                        br; span.state.warn.problem { "cannot run on " (short(&r.instance)) ": " (problem) }
                                    }
                                }
                            }
                            td.actions {
                                @if l.enabled { (action(ctx, &format!("{href}/disable"), "Disable", return_to, true)) }
                                @else { (action(ctx, &format!("{href}/enable"), "Enable", return_to, false)) }
                            }
                        }
                    }
                }
            }
            @if snap.locations.len() > LOCATIONS_SHOWN {
                p.muted { "The first " (LOCATIONS_SHOWN) " are shown; `mbx receive-location list` lists all." }
            }
        }
    }
}

pub(crate) async fn ordered(
    State(app): State<Arc<App>>,
    ctx: Ctx,
) -> Result<Response, ConsoleError> {
    let ports = app.mbx.ordered_ports().await?;
    let now = chrono::Utc::now();
    let body = html! {
        h1 { "Ordered ports" }
        p.muted { "One instance owns an ordered port at a time, under a lease whose epoch fences a former owner." }
        table #ordered-ports {
            thead { tr { th { "Send port" } th { "State" } th { "Owner" } th.num { "Epoch" } th.num { "Next sequence" } th { "Head" } th { "Last takeover" } th { "Actions" } } }
            tbody {
                @for p in &ports {
                    @let href = format!("/send-ports/{}", seg(&p.name));
                    tr data-port=(p.name) {
                        td { (p.name) }
                        td { span class=(format!("state {}", p.state)) { (p.state) } @if p.stop_on_failure { span.muted { " (stop on failure)" } } }
                        @if let (Some(by), Some(buckets)) = (&p.ordered_by, p.buckets) {
                            // ordered per key: owners and heads are per bucket and key
                            td.keyed {
                                "by " span.mono { (by) } ": " (p.buckets_live) " of " (buckets) " buckets held by "
                                (p.bucket_owners) " instance" @if p.bucket_owners != 1 { "s" }
                            }
                            td.num { "—" }
                            td.num { "per key" }
                            td {
                                @if p.held_keys > 0 {
                                    span.state.suspended { (p.held_keys) " key" @if p.held_keys != 1 { "s" } " held" }
                                    span.muted { " (`mbx send-port show " (p.name) "`, then `send-port resume|skip " (p.name) " --key K`)" }
                                } @else { "per key" }
                            }
                        } @else {
                            td {
                                @match &p.holder {
                                    Some(h) => { span.mono title=(h) { (short(h)) } " " (p.holder_host.as_deref().unwrap_or("")) @if !p.live { span.state.dead { " lease expired" } } }
                                    None => span.muted { "none yet" },
                                }
                            }
                            td.num { (p.epoch) }
                            td.num { (p.next_seq) }
                            td { (p.head) }
                        }
                        td { @match p.last_takeover { Some(t) => { time datetime=(t.to_rfc3339()) title=(t.to_rfc3339()) { (ago(t, now)) } }, None => "—" } }
                        td.actions {
                            @if p.state == PortState::Suspended {
                                (action(&ctx, &format!("{href}/resume"), "Resume", "/ordered", false))
                                (action(&ctx, &format!("{href}/skip"), "Skip", "/ordered", true))
                            }
                        }
                    }
                }
            }
        }
        @if ports.is_empty() { p.muted { "No ordered send port." } }
    };
    Ok(page(&ctx, "Ordered ports", Nav::Ordered, body))
}

/// The list's filter from the query (also what "all matching" pins).
pub(crate) fn selector_of(p: &HashMap<String, String>) -> Result<Selector, ConsoleError> {
    let kind = p
        .get("kind")
        .map(|k| k.parse::<Kind>())
        .transpose()
        .map_err(|e| ConsoleError::bad_request(format!("kind: {e}")))?;
    let older_than_s = p
        .get("older")
        .map(|t| {
            humantime::parse_duration(t.trim())
                .ok()
                .and_then(|d| i64::try_from(d.as_secs()).ok())
                .ok_or_else(|| {
                ConsoleError::bad_request(format!(
                    "older than: '{t}' is not a duration; use a number with s, m, h or d (example: 1h)"
                ))
            })
        })
        .transpose()?;
    Ok(Selector {
        port: p.get("port").cloned(),
        kind,
        error_like: p.get("error").cloned(),
        older_than_s,
        ..Default::default()
    })
}

pub(crate) async fn suspended_list(
    State(app): State<Arc<App>>,
    ctx: Ctx,
    RawQuery(raw): RawQuery,
) -> Result<Response, ConsoleError> {
    let p = params(raw.as_deref());
    let filter = selector_of(&p)?;
    let after: Option<i64> = p.get("after").and_then(|s| s.parse().ok());
    let items = app
        .mbx
        .suspended_list(&Selector {
            after_id: after,
            limit: Some(ITEMS_PER_PAGE + 1),
            ..filter.clone()
        })
        .await?;
    let more = items.len() as i64 > ITEMS_PER_PAGE;
    let items = &items[..items.len().min(ITEMS_PER_PAGE as usize)];
    let (count, count_note) = suspended_count(&app, &filter).await?;
    let keep: Vec<(&str, &String)> = ["port", "kind", "error", "older"]
        .iter()
        .filter_map(|k| p.get(*k).map(|v| (*k, v)))
        .collect();
    let next_href = items.last().map(|last| {
        let mut s: String = keep.iter().map(|(k, v)| format!("{k}={}&", q(v))).collect();
        s.push_str(&format!("after={}", last.id));
        format!("/suspended?{s}")
    });
    let items_table = items_table(&ctx, items);
    let body = html! {
        h1 { "Suspended items" }
        (suspended_filters(&p))
        p #match-count { strong { (count) } (count_note) " matching" @if after.is_some() { " · " a href="/suspended" { "first page" } } }
        @if ctx.read_only { (items_table) } @else {
            form #items method="post" action="/suspended/confirm" {
                (csrf_input(&ctx))
                @for (k, v) in &keep { input type="hidden" name=(k) value=(v); }
                (items_table)
                @if !items.is_empty() {
                    p.bulk {
                        button type="submit" name="do" value="resume-selected" { "Resume selected" } " "
                        button.danger type="submit" name="do" value="terminate-selected" { "Terminate selected" } " · "
                        button type="submit" name="do" value="resume-matching" { "Resume all " (count) " matching…" } " "
                        button.danger type="submit" name="do" value="terminate-matching" { "Terminate all " (count) " matching…" }
                    }
                    p.muted { "Each asks for a confirmation that shows the count, and then acts on exactly the items it showed." }
                }
            }
        }
        @if more { @if let Some(h) = next_href { p { a #next-page href=(h) { "Next " (ITEMS_PER_PAGE) " →" } } } }
    };
    Ok(page(&ctx, "Suspended items", Nav::Suspended, body))
}

/// How many suspended items match `filter`, and a note on the number: unfiltered or by port
/// only, the snapshot's count (" (as of …)"); otherwise counted, up to `COUNT_CAP`.
async fn suspended_count(app: &App, filter: &Selector) -> Result<(i64, String), ConsoleError> {
    let only_port =
        filter.kind.is_none() && filter.error_like.is_none() && filter.older_than_s.is_none();
    if only_port {
        let s = app.samples.read().map(|s| s.latest.clone()).ok();
        let n = s.as_ref().map(|s| match &filter.port {
            None => s.stats.suspended_total,
            Some(port) => s
                .stats
                .ports
                .iter()
                .find(|x| &x.name == port)
                .map(|x| x.suspended)
                .unwrap_or(0),
        });
        Ok((
            n.unwrap_or(0),
            s.map(|s| format!(" (as of {})", s.at.format("%H:%M:%S")))
                .unwrap_or_default(),
        ))
    } else {
        let n = app
            .mbx
            .suspended_count(&Selector {
                limit: Some(COUNT_CAP),
                ..filter.clone()
            })
            .await?;
        Ok((
            n,
            if n >= COUNT_CAP {
                " or more".to_owned()
            } else {
                String::new()
            },
        ))
    }
}

fn items_table(ctx: &Ctx, items: &[SuspendedItem]) -> Markup {
    let now = chrono::Utc::now();
    html! {
        table {
            thead { tr {
                @if !ctx.read_only { th { input type="checkbox" data-select-all="id" title="select all on this page"; } }
                th { "Id" } th { "Kind" } th { "Port" } th { "Reason" } th { "Suspended" } th { "Message" }
            } }
            tbody {
                @for it in items {
                    tr data-item=(it.id) {
                        @if !ctx.read_only { td { input type="checkbox" name="id" value=(it.id); } }
                        td { a href=(format!("/suspended/{}", it.id)) { (it.id) } }
                        td { span class=(format!("kind {}", it.kind)) { (it.kind) } @if !it.resumable { span.muted { " (not resumable)" } } }
                        td { (it.port.as_deref().unwrap_or("—")) }
                        td.reason { (truncate(&it.reason, 160)) }
                        td { time datetime=(it.suspended_at.to_rfc3339()) title=(it.suspended_at.to_rfc3339()) { (ago(it.suspended_at, now)) } }
                        td.mono { a href=(format!("/track?message={}", it.message_id)) { (it.message_id) } }
                    }
                }
            }
        }
        @if items.is_empty() { p.muted { "Nothing suspended matches." } }
    }
}

/// The suspended list's filter form, filled from the page's parameters.
fn suspended_filters(p: &HashMap<String, String>) -> Markup {
    html! {
        form.filters method="get" action="/suspended" {
            label { "Port " input name="port" value=[p.get("port")] size="14"; }
            label { " Kind "
                select name="kind" {
                    option value="" { "any" }
                    @for k in ["routing-failure", "receive-failure", "failed", "failed-final", "zombie"] {
                        option value=(k) selected[p.get("kind").map(String::as_str) == Some(k)] { (k) }
                    }
                }
            }
            label { " Error contains " input name="error" value=[p.get("error")] size="18"; }
            label { " Older than " input name="older" value=[p.get("older")] placeholder="1h" size="5"; }
            " " button type="submit" { "Filter" }
        }
    }
}

fn truncate(s: &str, max: usize) -> String {
    if s.chars().count() <= max {
        return s.to_owned();
    }
    let mut t: String = s.chars().take(max).collect();
    t.push('…');
    t
}

/// The page of an item that is no longer suspended: what became of it, or not found.
async fn settled_item(app: &App, ctx: &Ctx, id: i64) -> Result<Response, ConsoleError> {
    if let Some((outcome, at)) = app.mbx.suspended_settled(id).await? {
        let body = html! {
            h1 { "Suspended item " (id) }
            p #settled { "This item was " strong { (outcome.as_str()) } " at " (at.to_rfc3339()) "." }
            p { a href="/suspended" { "Suspended items" } }
        };
        return Ok(page(ctx, "Suspended item", Nav::Suspended, body));
    }
    Err(ConsoleError::Request(
        axum::http::StatusCode::NOT_FOUND,
        format!("suspended item {id} does not exist; the list shows the items"),
    ))
}

pub(crate) async fn suspended_detail(
    State(app): State<Arc<App>>,
    ctx: Ctx,
    Path(id): Path<String>,
) -> Result<Response, ConsoleError> {
    let id: i64 = id.parse().map_err(|_| {
        ConsoleError::bad_request(format!("'{id}' is not a suspended item id (a number)"))
    })?;
    let detail = match app.mbx.suspended_show(id).await {
        Ok(d) => d,
        Err(mbx_messagebox::Error::NotFound { .. }) => return settled_item(&app, &ctx, id).await,
        Err(e) => return Err(e.into()),
    };
    let (prefix, _) = app
        .mbx
        .message_body_prefix(detail.item.message_id, PREVIEW_BYTES as i32)
        .await?;
    let whole = prefix.len() as i64 >= detail.body_size;
    let shown = preview::render(&prefix, &detail.content_type, whole);
    let it = &detail.item;
    let body = html! {
        h1 { "Suspended item " (it.id) }
        dl.facts {
            dt { "Kind" } dd { span class=(format!("kind {}", it.kind)) { (it.kind) } @if !it.resumable { " (not resumable)" } }
            dt { "Port" } dd { (it.port.as_deref().unwrap_or("—")) }
            dt { "Reason" } dd #reason { (it.reason) }
            dt { "Suspended" } dd { (it.suspended_at.to_rfc3339()) }
            dt { "Message" } dd.mono { a href=(format!("/track?message={}", it.message_id)) { (it.message_id) } }
            dt { "Published" } dd { (detail.published_at.to_rfc3339()) }
            dt { "Body" } dd { (detail.content_type) ", " (detail.body_size) " bytes · " a #download href=(format!("/suspended/{}/body", it.id)) download { "download" } }
        }
        @if !ctx.read_only {
            form.inline method="post" action="/suspended/confirm" {
                (csrf_input(&ctx))
                input type="hidden" name="id" value=(it.id);
                @if it.resumable { button type="submit" name="do" value="resume-selected" { "Resume…" } " " }
                button.danger type="submit" name="do" value="terminate-selected" { "Terminate…" }
            }
        }
        h2 { "Attempts" }
        @if detail.attempts.is_empty() { p.muted { "No delivery attempt was recorded." } } @else {
            table #attempts {
                thead { tr { th { "#" } th { "At" } th { "Transport" } th { "Instance" } th { "Error" } } }
                tbody { @for a in &detail.attempts {
                    tr { td { (a.attempt) } td { (a.at.to_rfc3339()) } td { (a.transport) } td.mono { (a.instance.map(|i| short(&i)).unwrap_or_default()) } td.reason { (a.error) } }
                } }
            }
        }
        h2 { "Context" }
        table #context {
            thead { tr { th { "Property" } th { "Value" } th { "Promoted" } } }
            tbody { @for (name, prop) in detail.context.iter() {
                tr { td.mono { (name) } td { (truncate(&prop.value.to_plain_string(), 400)) } td { @if prop.promoted { "yes" } } }
            } }
        }
        h2 { "Body " span.muted { "(" (shown.format.as_str()) @if !whole { ", first " (prefix.len()) " of " (detail.body_size) " bytes" } ")" } }
        pre #body-preview { (shown.text) }
    };
    Ok(page(&ctx, "Suspended item", Nav::Suspended, body))
}

/// The body as a download, read chunk by chunk when it is stored in chunks.
pub(crate) async fn suspended_body(
    State(app): State<Arc<App>>,
    Path(id): Path<String>,
) -> Result<Response, ConsoleError> {
    let id: i64 = id.parse().map_err(|_| {
        ConsoleError::bad_request(format!("'{id}' is not a suspended item id (a number)"))
    })?;
    let detail = app.mbx.suspended_show(id).await?;
    let message = detail.item.message_id;
    let (_, chunked) = app.mbx.message_body_prefix(message, 0).await?;
    let body = if chunked {
        let mbx = app.mbx.clone();
        Body::from_stream(futures_util::stream::unfold(Some(0i32), move |seq| {
            let mbx = mbx.clone();
            async move {
                let seq = seq?;
                match mbx.message_chunk(message, seq).await {
                    Ok(Some(chunk)) => Some((Ok::<_, mbx_messagebox::Error>(chunk), Some(seq + 1))),
                    Ok(None) => None,
                    Err(e) => Some((Err(e), None)),
                }
            }
        }))
    } else {
        Body::from(app.mbx.message_body(message).await?)
    };
    Ok((
        [
            (header::CONTENT_TYPE, "application/octet-stream".to_owned()),
            (header::CONTENT_LENGTH, detail.body_size.to_string()),
            (
                header::CONTENT_DISPOSITION,
                format!("attachment; filename=\"{message}.bin\""),
            ),
        ],
        body,
    )
        .into_response())
}

pub(crate) async fn track(
    State(app): State<Arc<App>>,
    ctx: Ctx,
    RawQuery(raw): RawQuery,
) -> Result<Response, ConsoleError> {
    let p = params(raw.as_deref());
    let wanted = p.get("message").map(|s| s.trim().to_owned());
    let id = wanted
        .as_deref()
        .map(|m| {
            uuid::Uuid::parse_str(m).map_err(|_| {
                ConsoleError::bad_request(format!(
                    "'{m}' is not a message id (a UUID, as mbx.MessageId shows it)"
                ))
            })
        })
        .transpose()?;
    let events = match id {
        Some(id) => app.mbx.tracking_events(id).await?,
        None => Vec::new(),
    };
    let first = events.first().map(|e| e.at);
    let body = html! {
        h1 { "Tracking" }
        form.filters method="get" action="/track" {
            label { "Message id " input name="message" value=[wanted.as_deref()] size="40" placeholder="0192f7a4-…"; }
            " " button type="submit" { "Find" }
        }
        @if let Some(id) = id {
            @if events.is_empty() {
                p.muted #no-events { "No tracked event of " (id) ": tracking was off for it, or its events were purged after the retention (7 days by default)." }
            } @else {
                ol.timeline #timeline {
                    @for e in &events {
                        li class=(format!("event {}", e.event)) {
                            span.when { time datetime=(e.at.to_rfc3339()) { (e.at.format("%H:%M:%S%.3f")) } " "
                                span.muted { "+" (first.map(|f| (e.at - f).num_milliseconds()).unwrap_or(0)) " ms" } }
                            span.what { (e.event) }
                            @if let Some(port) = &e.port { span.port { " · " (port) } }
                            @if let Some(i) = &e.instance_id { span.mono.muted title=(i) { " · instance " (short(i)) } }
                            @if let Some(d) = &e.detail { div.detail { (d) } }
                        }
                    }
                }
            }
        }
    };
    Ok(page(&ctx, "Tracking", Nav::Tracking, body))
}

pub(crate) async fn login() -> Response {
    crate::view::login_page(None).into_response()
}
