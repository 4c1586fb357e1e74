//! The page frame, the small pieces pages are made of (action buttons with their CSRF
//! value, charts as inline SVG) and the embedded assets.

use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use maud::{html, Markup, DOCTYPE};

use crate::auth::Ctx;
use crate::sampler::Point;

const CSS: &str = include_str!("../assets/console.css");
const JS: &str = include_str!("../assets/console.js");

pub(crate) async fn css() -> Response {
    (
        [
            (header::CONTENT_TYPE, "text/css; charset=utf-8"),
            (header::CACHE_CONTROL, "max-age=300"),
        ],
        CSS,
    )
        .into_response()
}

pub(crate) async fn js() -> Response {
    (
        [
            (header::CONTENT_TYPE, "text/javascript; charset=utf-8"),
            (header::CACHE_CONTROL, "max-age=300"),
        ],
        JS,
    )
        .into_response()
}

#[derive(Clone, Copy, PartialEq, Eq)]
pub(crate) enum Nav {
    Overview,
    Ordered,
    Suspended,
    Tracking,
}

fn frame(title: &str, nav: Option<Nav>, ctx: Option<&Ctx>, body: Markup) -> Markup {
    let link = |n: Nav, href: &str, label: &str| {
        html! { a href=(href) class=[(nav == Some(n)).then_some("active")] { (label) } }
    };
    html! {
        (DOCTYPE)
        html lang="en" {
            head {
                meta charset="utf-8";
                meta name="viewport" content="width=device-width, initial-scale=1";
                title { (title) " · mbx Group Hub" }
                link rel="stylesheet" href="/assets/console.css";
                script src="/assets/console.js" defer {}
            }
            body {
                header {
                    span.brand { "mbx Group Hub" }
                    @if nav.is_some() {
                        nav {
                            (link(Nav::Overview, "/", "Overview"))
                            (link(Nav::Ordered, "/ordered", "Ordered ports"))
                            (link(Nav::Suspended, "/suspended", "Suspended"))
                            (link(Nav::Tracking, "/track", "Tracking"))
                        }
                    }
                    @if let Some(ctx) = ctx {
                        @if ctx.read_only { span.badge.readonly { "read-only" } }
                        @if ctx.logged_in {
                            form.inline method="post" action="/logout" {
                                (csrf_input(ctx)) button.link type="submit" { "Log out" }
                            }
                        }
                    }
                }
                main {
                    @if let Some(flash) = ctx.and_then(|c| c.flash.as_deref()) {
                        p.flash role="status" { (flash) }
                    }
                    (body)
                }
            }
        }
    }
}

/// A whole page; clears the flash it showed.
pub(crate) fn page(ctx: &Ctx, title: &str, nav: Nav, body: Markup) -> Response {
    let response = frame(title, Some(nav), Some(ctx), body).into_response();
    if ctx.flash.is_some() {
        return (crate::auth::clear_flash(), response).into_response();
    }
    response
}

pub(crate) fn error_page(status: StatusCode, message: &str) -> Markup {
    frame(
        status.canonical_reason().unwrap_or("Error"),
        None,
        None,
        html! {
            h1 { (status.as_u16()) " " (status.canonical_reason().unwrap_or("")) }
            p.error { (message) }
            p { a href="/" { "Back to the overview" } }
        },
    )
}

pub(crate) fn login_page(problem: Option<&str>) -> Markup {
    frame(
        "Log in",
        None,
        None,
        html! {
            h1 { "Log in" }
            @if let Some(p) = problem { p.error { (p) } }
            form method="post" action="/login" {
                label { "Token " input type="password" name="token" autofocus required; }
                " " button type="submit" { "Log in" }
            }
            p.hint { "The token is the one `mbx console --token` reads (env: or file:)." }
        },
    )
}

pub(crate) fn csrf_input(ctx: &Ctx) -> Markup {
    html! { input type="hidden" name="csrf" value=(ctx.csrf); }
}

/// A path segment with everything but unreserved characters percent-encoded.
pub(crate) fn seg(name: &str) -> String {
    form_urlencoded::byte_serialize(name.as_bytes())
        .collect::<String>()
        .replace('+', "%20")
}

/// A query-string value.
pub(crate) fn q(value: &str) -> String {
    form_urlencoded::byte_serialize(value.as_bytes()).collect()
}

/// A button that POSTs an action (none on a read-only console).
pub(crate) fn action(ctx: &Ctx, href: &str, label: &str, return_to: &str, danger: bool) -> Markup {
    if ctx.read_only {
        return html! {};
    }
    html! {
        form.inline method="post" action=(href) {
            (csrf_input(ctx))
            input type="hidden" name="return_to" value=(return_to);
            button type="submit" class=[danger.then_some("danger")] data-action=(label) { (label) }
        }
    }
}

/// A chart of the last 15 minutes: backlog (area) and delivered/s (line), each scaled to
/// its own maximum, which the title gives.
pub(crate) fn chart(points: &[Point]) -> Markup {
    const W: f64 = 180.0;
    const H: f64 = 36.0;
    if points.len() < 2 {
        return html! { span.muted { "collecting…" } };
    }
    // at most 90 points: bucket by time
    let step = points.len().div_ceil(90);
    let pts: Vec<Point> = points
        .chunks(step)
        .map(|c| Point {
            at: c[c.len() - 1].at,
            backlog: c.iter().map(|p| p.backlog).max().unwrap_or(0),
            rate: c.iter().map(|p| p.rate).sum::<f64>() / c.len() as f64,
        })
        .collect();
    let max_b = pts.iter().map(|p| p.backlog).max().unwrap_or(0).max(1) as f64;
    let max_r = pts.iter().map(|p| p.rate).fold(0.0, f64::max).max(1.0);
    let n = (pts.len() - 1).max(1) as f64;
    let xy = |i: usize, v: f64, max: f64| {
        format!(
            "{:.1},{:.1}",
            i as f64 / n * W,
            H - v / max * (H - 2.0) - 1.0
        )
    };
    let backlog: Vec<String> = pts
        .iter()
        .enumerate()
        .map(|(i, p)| xy(i, p.backlog as f64, max_b))
        .collect();
    let rate: Vec<String> = pts
        .iter()
        .enumerate()
        .map(|(i, p)| xy(i, p.rate, max_r))
        .collect();
    let area = format!("0,{H} {} {W},{H}", backlog.join(" "));
    let title = format!(
        "last {} min: backlog up to {}, delivered up to {:.1}/s",
        ((pts[pts.len() - 1].at - pts[0].at).num_seconds() + 59) / 60,
        max_b as i64,
        max_r
    );
    html! {
        svg.chart width=(W) height=(H) viewBox=(format!("0 0 {W} {H}")) role="img" aria-label=(title) {
            title { (title) }
            polygon.backlog points=(area) {}
            polyline.rate points=(rate.join(" ")) {}
        }
    }
}

pub(crate) fn ago(at: chrono::DateTime<chrono::Utc>, now: chrono::DateTime<chrono::Utc>) -> String {
    let s = (now - at).num_seconds().max(0);
    match s {
        0..=119 => format!("{s} s ago"),
        120..=7199 => format!("{} min ago", s / 60),
        7200..=172_799 => format!("{} h ago", s / 3600),
        _ => format!("{} d ago", s / 86_400),
    }
}
