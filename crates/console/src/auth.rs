//! Who may use the console and proof that a POST came from its own page.
//!
//! - With a token, a session is a signed cookie (`axum-extra`'s `SignedCookieJar`,
//!   HMAC-SHA256) under a key derived from the token (HMAC-SHA512(token, a fixed label)):
//!   it proves the token was given at `/login` without storing or sending the token itself,
//!   stays valid across a restart with the same token and not with another one. It is
//!   `HttpOnly` and `SameSite=Strict`. Scripts may send `Authorization: Bearer <token>`
//!   instead. Without a token (loopback only) everyone on the machine is the one session
//!   `local`.
//! - Every POST but the login carries `csrf` = hex(HMAC(a key made at start, session)); a
//!   page of another site cannot read it, so it cannot forge the form. A POST whose
//!   `Origin` is another site is refused too, and on a read-only console every POST is
//!   refused.

use std::sync::Arc;

use axum::body::{to_bytes, Body};
use axum::extract::{FromRequestParts, Request, State};
use axum::http::header::{AUTHORIZATION, HOST, ORIGIN};
use axum::http::request::Parts;
use axum::http::{HeaderMap, Method, StatusCode};
use axum::middleware::Next;
use axum::response::{IntoResponse, Redirect, Response};
use axum_extra::extract::cookie::{Cookie, CookieJar, Key, SameSite, SignedCookieJar};
use ring::hmac;
use ring::rand::{SecureRandom, SystemRandom};

use crate::{App, ConsoleError};

const SESSION_COOKIE: &str = "mbx_console";
const FLASH_COOKIE: &str = "mbx_flash";
const SESSION_LABEL: &[u8] = b"mbx-console-session";
/// The session of whoever gave the token (the signed session cookie's value).
const TOKEN_SESSION: &str = "token";
/// The one session of a console without a token.
const LOCAL_SESSION: &str = "local";
/// A form is small: a page's selected ids and a filter.
const FORM_MAX_BYTES: usize = 1 << 20;

pub(crate) struct Auth {
    /// What the token makes (`None`: no token, loopback).
    token: Option<TokenKeys>,
    csrf_key: hmac::Key,
}

struct TokenKeys {
    /// HMAC-SHA256 keyed by the token: a given token is compared through its tag.
    tag_key: hmac::Key,
    /// The session cookie's signing key, derived from the token.
    cookie_key: Key,
}

impl TokenKeys {
    fn new(token: &str) -> Self {
        // 64 bytes, as a cookie key takes: HMAC-SHA512 keyed by the token
        let material = hmac::sign(
            &hmac::Key::new(hmac::HMAC_SHA512, token.as_bytes()),
            SESSION_LABEL,
        );
        Self {
            tag_key: hmac::Key::new(hmac::HMAC_SHA256, token.as_bytes()),
            cookie_key: Key::from(material.as_ref()),
        }
    }
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
            token: token.map(TokenKeys::new),
            csrf_key: hmac::Key::new(hmac::HMAC_SHA256, &key),
        })
    }

    /// The session a request belongs to, if it has one.
    fn session_of(&self, headers: &HeaderMap) -> Option<String> {
        let Some(token) = &self.token else {
            return Some(LOCAL_SESSION.to_owned());
        };
        // `get` verifies the signature: a cookie not signed with the token's key is none
        let jar = SignedCookieJar::from_headers(headers, token.cookie_key.clone());
        if jar
            .get(SESSION_COOKIE)
            .is_some_and(|c| c.value() == TOKEN_SESSION)
        {
            return Some(TOKEN_SESSION.to_owned());
        }
        let bearer = headers
            .get(AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.strip_prefix("Bearer "))?;
        self.token_matches(bearer).then(|| TOKEN_SESSION.to_owned())
    }

    /// Compares a given token with the real one in constant time.
    fn token_matches(&self, given: &str) -> bool {
        match &self.token {
            // a given token is right when its session tag is the real one's
            Some(token) => {
                let given = hmac::Key::new(hmac::HMAC_SHA256, given.as_bytes());
                let tag = hmac::sign(&given, SESSION_LABEL);
                hmac::verify(&token.tag_key, SESSION_LABEL, tag.as_ref()).is_ok()
            }
            None => true,
        }
    }

    pub fn csrf(&self, session: &str) -> String {
        hex::encode(hmac::sign(&self.csrf_key, session.as_bytes()))
    }

    fn csrf_ok(&self, session: &str, given: &str) -> bool {
        hex::decode(given)
            .map(|tag| hmac::verify(&self.csrf_key, session.as_bytes(), &tag).is_ok())
            .unwrap_or(false)
    }
}

/// A cookie of the console: for the whole site, never read by scripts, never sent by a
/// request of another site.
fn console_cookie(name: &'static str, value: String) -> Cookie<'static> {
    Cookie::build((name, value))
        .path("/")
        .http_only(true)
        .same_site(SameSite::Strict)
        .build()
}

/// A one-time message shown on the next page (what an action changed), for a minute.
pub(crate) fn set_flash(message: &str) -> CookieJar {
    let mut cookie = console_cookie(FLASH_COOKIE, message.to_owned());
    cookie.set_max_age(Some(time::Duration::seconds(60)));
    CookieJar::new().add(cookie)
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
        let flash = CookieJar::from_headers(&parts.headers)
            .get(FLASH_COOKIE)
            .map(|c| c.value().to_owned());
        Ok(Ctx {
            csrf: app.auth.csrf(&session.0),
            read_only: app.read_only,
            flash,
            logged_in: app.auth.token.is_some(),
        })
    }
}

/// Clears the flash cookie once a page has shown it.
pub(crate) fn clear_flash() -> CookieJar {
    removal(FLASH_COOKIE)
}

/// A cookie that removes the console's cookie `name` from the browser (a jar's `remove`
/// sends nothing for a cookie it was not built from).
fn removal(name: &'static str) -> CookieJar {
    let mut cookie = console_cookie(name, String::new());
    cookie.make_removal();
    CookieJar::new().add(cookie)
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
    let Some(keys) = &app.auth.token else {
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
    (session_cookie(keys), Redirect::to("/")).into_response()
}

/// The session cookie, signed with the token's key.
fn session_cookie(keys: &TokenKeys) -> SignedCookieJar {
    SignedCookieJar::new(keys.cookie_key.clone())
        .add(console_cookie(SESSION_COOKIE, TOKEN_SESSION.to_owned()))
}

/// POST /logout: forgets the session cookie.
pub(crate) async fn logout() -> Response {
    (removal(SESSION_COOKIE), Redirect::to("/login")).into_response()
}

#[cfg(test)]
mod tests {
    use axum::http::header::SET_COOKIE;
    use axum::http::HeaderValue;

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

    /// The `Set-Cookie` of a login to `auth`.
    fn login_set_cookie(auth: &Auth) -> String {
        let response = (session_cookie(auth.token.as_ref().unwrap()), ()).into_response();
        let all: Vec<_> = response.headers().get_all(SET_COOKIE).iter().collect();
        assert_eq!(all.len(), 1);
        all[0].to_str().unwrap().to_owned()
    }

    /// The `name=value` of the session cookie a login to `auth` sets.
    fn signed_session_cookie(auth: &Auth) -> String {
        login_set_cookie(auth).split(';').next().unwrap().to_owned()
    }

    #[test]
    fn the_session_cookie_is_signed_http_only_and_same_site() {
        let auth = Auth::new(Some("0123456789abcdef-secret")).unwrap();
        let set = login_set_cookie(&auth);
        for attribute in ["HttpOnly", "SameSite=Strict", "Path=/"] {
            assert!(
                set.split("; ").any(|a| a == attribute),
                "{attribute}: {set}"
            );
        }
        let cookie = signed_session_cookie(&auth);
        assert!(!cookie.contains("0123456789abcdef-secret"), "{cookie}");
        assert_ne!(cookie, "mbx_console=token", "not signed");
        let session = |auth: &Auth, cookie: &str| auth.session_of(&headers(&[("cookie", cookie)]));
        // the same token after a restart takes it; another token does not
        let restarted = Auth::new(Some("0123456789abcdef-secret")).unwrap();
        assert_eq!(session(&restarted, &cookie), Some(TOKEN_SESSION.to_owned()));
        let other = Auth::new(Some("another-token-0123456789")).unwrap();
        assert_eq!(session(&other, &cookie), None);
        // an unsigned or altered cookie is none
        assert_eq!(session(&auth, "mbx_console=token"), None);
        let altered = format!("{}x", &cookie[..cookie.len() - 1]);
        assert_eq!(session(&auth, &altered), None);
        // a console without a token has one session for everyone
        assert_eq!(
            Auth::new(None).unwrap().session_of(&headers(&[])),
            Some(LOCAL_SESSION.to_owned())
        );
    }

    #[test]
    fn a_flash_message_comes_back_as_it_was_set() {
        let message = "send port eu: started → stopped; 100% done & more";
        let response = (set_flash(message), ()).into_response();
        let set = response.headers()[SET_COOKIE].to_str().unwrap().to_owned();
        for attribute in ["HttpOnly", "SameSite=Strict", "Path=/", "Max-Age=60"] {
            assert!(
                set.split("; ").any(|a| a == attribute),
                "{attribute}: {set}"
            );
        }
        let pair = set.split(';').next().unwrap();
        let jar = CookieJar::from_headers(&headers(&[("cookie", pair)]));
        assert_eq!(
            jar.get(FLASH_COOKIE).map(|c| c.value().to_owned()),
            Some(message.to_owned())
        );
        let cleared = (clear_flash(), ()).into_response();
        let clear = cleared.headers()[SET_COOKIE].to_str().unwrap();
        assert!(
            clear.starts_with("mbx_flash=;") && clear.contains("Max-Age=0"),
            "{clear}"
        );
    }

    #[tokio::test]
    async fn logging_out_removes_the_session_cookie() {
        let response = logout().await;
        let clear = response.headers()[SET_COOKIE].to_str().unwrap();
        assert!(clear.starts_with("mbx_console=;"), "{clear}");
        for attribute in ["HttpOnly", "SameSite=Strict", "Path=/", "Max-Age=0"] {
            assert!(
                clear.split("; ").any(|a| a == attribute),
                "{attribute}: {clear}"
            );
        }
    }

    #[test]
    fn a_session_needs_the_right_cookie_or_token() {
        let auth = Auth::new(Some("0123456789abcdef-secret")).unwrap();
        assert!(auth.session_of(&headers(&[])).is_none());
        let right = signed_session_cookie(&auth);
        let cookie_header = format!("a=b; {right}");
        assert_eq!(
            auth.session_of(&headers(&[("cookie", &cookie_header)])),
            Some(TOKEN_SESSION.to_owned())
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
