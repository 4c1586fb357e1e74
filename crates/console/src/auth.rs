//! Who may use the console and proof that a POST came from its own page.
//!
//! - With a token, a session is a cookie holding HMAC(token, a fixed label): it proves
//!   the token was given at `/login` without storing or sending the token itself. Scripts
//!   may send `Authorization: Bearer <token>` instead. Without a token (loopback only)
//!   everyone on the machine is the one session `local`.
//! - Every POST but the login carries `csrf` = HMAC(a key made at start, session); a page
//!   of another site cannot read it, so it cannot forge the form. A POST whose `Origin`
//!   is another site is refused too, and on a read-only console every POST is refused.

use std::sync::Arc;

use axum::body::{to_bytes, Body};
use axum::extract::{FromRequestParts, Request, State};
use axum::http::header::{AUTHORIZATION, COOKIE, HOST, ORIGIN, SET_COOKIE};
use axum::http::request::Parts;
use axum::http::{HeaderMap, HeaderValue, Method, StatusCode};
use axum::middleware::Next;
use axum::response::{IntoResponse, Redirect, Response};
use ring::hmac;
use ring::rand::{SecureRandom, SystemRandom};

use crate::{App, ConsoleError};

const SESSION_COOKIE: &str = "mbx_console";
const FLASH_COOKIE: &str = "mbx_flash";
const SESSION_LABEL: &[u8] = b"mbx-console-session";
/// A form is small: a page's selected ids and a filter.
const FORM_MAX_BYTES: usize = 1 << 20;

pub(crate) struct Auth {
    /// HMAC key made of the token (`None`: no token, loopback).
    token_key: Option<hmac::Key>,
    csrf_key: hmac::Key,
}

/// The caller's session, put in the request by [`guard`].
#[derive(Clone)]
pub(crate) struct Session(pub String);

impl Auth {
    pub fn new(token: Option<&str>) -> Result<Auth, ConsoleError> {
        let mut key = [0u8; 32];
        SystemRandom::new()
            .fill(&mut key)
            .map_err(|_| ConsoleError::Config("no random numbers from the system".into()))?;
        Ok(Auth {
            token_key: token.map(|t| hmac::Key::new(hmac::HMAC_SHA256, t.as_bytes())),
            csrf_key: hmac::Key::new(hmac::HMAC_SHA256, &key),
        })
    }

    /// The session cookie's value for the right token.
    fn session_value(key: &hmac::Key) -> String {
        hex(hmac::sign(key, SESSION_LABEL).as_ref())
    }

    /// The session a request belongs to, if it has one.
    fn session_of(&self, headers: &HeaderMap) -> Option<String> {
        let Some(key) = &self.token_key else {
            return Some("local".to_owned());
        };
        if let Some(value) = cookie(headers, SESSION_COOKIE) {
            if let Some(tag) = unhex(&value) {
                if hmac::verify(key, SESSION_LABEL, &tag).is_ok() {
                    return Some(value);
                }
            }
        }
        let bearer = headers
            .get(AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.strip_prefix("Bearer "))?;
        self.token_matches(bearer).then(|| Self::session_value(key))
    }

    /// Compares a given token with the real one in constant time.
    fn token_matches(&self, given: &str) -> bool {
        match &self.token_key {
            // a given token is right when its session tag is the real one's
            Some(key) => {
                let given = hmac::Key::new(hmac::HMAC_SHA256, given.as_bytes());
                let tag = hmac::sign(&given, SESSION_LABEL);
                hmac::verify(key, SESSION_LABEL, tag.as_ref()).is_ok()
            }
            None => true,
        }
    }

    pub fn csrf(&self, session: &str) -> String {
        hex(hmac::sign(&self.csrf_key, session.as_bytes()).as_ref())
    }

    fn csrf_ok(&self, session: &str, given: &str) -> bool {
        unhex(given)
            .map(|tag| hmac::verify(&self.csrf_key, session.as_bytes(), &tag).is_ok())
            .unwrap_or(false)
    }
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

fn unhex(text: &str) -> Option<Vec<u8>> {
    if !text.len().is_multiple_of(2) || !text.is_ascii() {
        return None;
    }
    (0..text.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(&text[i..i + 2], 16).ok())
        .collect()
}

/// A cookie's value from the request.
pub(crate) fn cookie(headers: &HeaderMap, name: &str) -> Option<String> {
    headers
        .get_all(COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .filter_map(|pair| pair.trim().split_once('='))
        .find(|(k, _)| *k == name)
        .map(|(_, v)| v.to_owned())
}

/// A one-time message shown on the next page (what an action changed).
pub(crate) fn set_flash(message: &str) -> HeaderValue {
    let value: String = form_urlencoded::byte_serialize(message.as_bytes()).collect();
    HeaderValue::from_str(&format!(
        "{FLASH_COOKIE}={value}; Path=/; HttpOnly; SameSite=Strict; Max-Age=60"
    ))
    .unwrap_or_else(|_| HeaderValue::from_static("mbx_flash=; Path=/; Max-Age=0"))
}

/// What every page needs from the request: the session's CSRF value, whether actions
/// are offered, and a flash message left by the last action.
pub(crate) struct Ctx {
    pub csrf: String,
    pub read_only: bool,
    pub flash: Option<String>,
    pub logged_in: bool,
}

impl FromRequestParts<Arc<App>> for Ctx {
    type Rejection = ConsoleError;

    async fn from_request_parts(parts: &mut Parts, app: &Arc<App>) -> Result<Ctx, ConsoleError> {
        let session = parts.extensions.get::<Session>().cloned().ok_or_else(|| {
            ConsoleError::Request(StatusCode::UNAUTHORIZED, "log in first".into())
        })?;
        let flash = cookie(&parts.headers, FLASH_COOKIE).map(|v| {
            form_urlencoded::parse(format!("m={v}").as_bytes())
                .next()
                .map(|(_, m)| m.into_owned())
                .unwrap_or_default()
        });
        Ok(Ctx {
            csrf: app.auth.csrf(&session.0),
            read_only: app.read_only,
            flash,
            logged_in: app.auth.token_key.is_some(),
        })
    }
}

/// Clears the flash cookie once a page has shown it.
pub(crate) fn clear_flash(response: &mut Response) {
    response.headers_mut().append(
        SET_COOKIE,
        HeaderValue::from_static("mbx_flash=; Path=/; HttpOnly; SameSite=Strict; Max-Age=0"),
    );
}

fn refuse(status: StatusCode, message: &str) -> Response {
    (status, crate::view::error_page(status, message)).into_response()
}

/// A POST from a page of another site (its `Origin` is not this console).
fn foreign_origin(headers: &HeaderMap) -> bool {
    let Some(origin) = headers.get(ORIGIN).and_then(|v| v.to_str().ok()) else {
        return false;
    };
    let host = headers
        .get(HOST)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("");
    origin != format!("http://{host}") && origin != format!("https://{host}")
}

/// The middleware in front of every route: sessions, read-only, origin and CSRF.
pub(crate) async fn guard(State(app): State<Arc<App>>, req: Request, next: Next) -> Response {
    let path = req.uri().path().to_owned();
    let open = path == "/login" || path == "/healthz" || path.starts_with("/assets/");
    let session = app.auth.session_of(req.headers());
    let (mut parts, body) = req.into_parts();
    if let Some(s) = &session {
        parts.extensions.insert(Session(s.clone()));
    } else if !open {
        return if parts.method == Method::GET {
            Redirect::to("/login").into_response()
        } else {
            refuse(
                StatusCode::UNAUTHORIZED,
                "this console needs its token: log in at /login (or send Authorization: Bearer)",
            )
        };
    }
    if parts.method != Method::POST {
        return next.run(Request::from_parts(parts, body)).await;
    }
    if foreign_origin(&parts.headers) {
        return refuse(
            StatusCode::FORBIDDEN,
            "refused: the form came from another site (Origin differs from this console)",
        );
    }
    if path == "/login" {
        return next.run(Request::from_parts(parts, body)).await;
    }
    if app.read_only && path != "/logout" {
        return refuse(
            StatusCode::FORBIDDEN,
            "this console is read-only (--read-only, or its database role cannot write): no action is possible",
        );
    }
    let bytes = match to_bytes(body, FORM_MAX_BYTES).await {
        Ok(b) => b,
        Err(_) => {
            return refuse(
                StatusCode::PAYLOAD_TOO_LARGE,
                "the form is larger than 1 MiB",
            )
        }
    };
    let csrf = form_urlencoded::parse(&bytes)
        .find(|(k, _)| k == "csrf")
        .map(|(_, v)| v.into_owned());
    let session = session.unwrap_or_default();
    if !csrf.is_some_and(|c| app.auth.csrf_ok(&session, &c)) {
        return refuse(
            StatusCode::FORBIDDEN,
            "refused: the form's CSRF value is missing or wrong; reload the page and try again",
        );
    }
    next.run(Request::from_parts(parts, Body::from(bytes)))
        .await
}

/// POST /login: the token from the form; a right one sets the session cookie.
pub(crate) async fn login(State(app): State<Arc<App>>, body: bytes::Bytes) -> Response {
    let Some(key) = &app.auth.token_key else {
        return Redirect::to("/").into_response();
    };
    let token = form_urlencoded::parse(&body)
        .find(|(k, _)| k == "token")
        .map(|(_, v)| v.into_owned())
        .unwrap_or_default();
    if !app.auth.token_matches(&token) {
        tracing::warn!("console login refused: wrong token");
        return (
            StatusCode::UNAUTHORIZED,
            crate::view::login_page(Some("wrong token")),
        )
            .into_response();
    }
    let cookie = format!(
        "{SESSION_COOKIE}={}; Path=/; HttpOnly; SameSite=Strict",
        Auth::session_value(key)
    );
    let mut response = Redirect::to("/").into_response();
    if let Ok(v) = HeaderValue::from_str(&cookie) {
        response.headers_mut().insert(SET_COOKIE, v);
    }
    response
}

/// POST /logout: forgets the session cookie.
pub(crate) async fn logout() -> Response {
    let mut response = Redirect::to("/login").into_response();
    response.headers_mut().insert(
        SET_COOKIE,
        HeaderValue::from_static("mbx_console=; Path=/; HttpOnly; SameSite=Strict; Max-Age=0"),
    );
    response
}

#[cfg(test)]
mod tests {
    use super::*;

    fn headers(pairs: &[(&str, &str)]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for (k, v) in pairs {
            h.append(
                axum::http::HeaderName::from_bytes(k.as_bytes()).unwrap(),
                HeaderValue::from_str(v).unwrap(),
            );
        }
        h
    }

    #[test]
    fn a_session_needs_the_right_cookie_or_token() {
        let auth = Auth::new(Some("0123456789abcdef-secret")).unwrap();
        assert!(auth.session_of(&headers(&[])).is_none());
        let right = Auth::session_value(auth.token_key.as_ref().unwrap());
        let cookie_header = format!("a=b; mbx_console={right}");
        assert_eq!(
            auth.session_of(&headers(&[("cookie", &cookie_header)])),
            Some(right.clone())
        );
        assert!(auth
            .session_of(&headers(&[("cookie", "mbx_console=00ff")]))
            .is_none());
        assert!(auth
            .session_of(&headers(&[(
                "authorization",
                "Bearer 0123456789abcdef-secret"
            )]))
            .is_some());
        assert!(auth
            .session_of(&headers(&[("authorization", "Bearer wrong-token-value")]))
            .is_none());
    }

    #[test]
    fn a_csrf_value_belongs_to_its_session_and_process() {
        let auth = Auth::new(None).unwrap();
        let value = auth.csrf("local");
        assert!(auth.csrf_ok("local", &value));
        assert!(!auth.csrf_ok("other", &value));
        assert!(!auth.csrf_ok("local", ""));
        assert!(!auth.csrf_ok("local", "zz"));
        // another process (a restarted console) has another key
        assert!(!Auth::new(None).unwrap().csrf_ok("local", &value));
    }

    #[test]
    fn an_origin_of_another_site_is_foreign() {
        let own = headers(&[
            ("host", "127.0.0.1:8081"),
            ("origin", "http://127.0.0.1:8081"),
        ]);
        assert!(!foreign_origin(&own));
        let other = headers(&[
            ("host", "127.0.0.1:8081"),
            ("origin", "http://evil.example"),
        ]);
        assert!(foreign_origin(&other));
        assert!(!foreign_origin(&headers(&[("host", "x")])));
    }
}
