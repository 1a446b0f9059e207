//! Every `/api` request and `/metrics` passes here: cross-site checks, the
//! bearer token, the role the route needs, and the audit record of every
//! change and every refusal. Handlers get the proven [`Caller`] and check
//! the environment once the request names it.

use axum::extract::{MatchedPath, Request, State};
use axum::http::{HeaderMap, Method, StatusCode, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use gantry_auth::{Action, AuditLog, Caller, Entry, Role, Tokens};

use crate::{AppError, AppState};

/// How requests are authenticated.
pub struct Access {
    /// The tokens.
    pub tokens: Tokens,
    /// Where changes and refusals are recorded.
    pub audit: AuditLog,
    /// `--insecure-no-auth`: every caller is an anonymous admin.
    pub insecure: bool,
    /// `--public-metrics`: `/metrics` needs no token.
    pub public_metrics: bool,
}

/// What a handler tells the audit log about what it did (a response
/// extension): the action, and the run and environment it touched.
#[derive(Clone, Debug, Default)]
pub struct Audited {
    /// `approve`, `reject`, `submit`, `release`, ...
    pub action: String,
    /// The run.
    pub run: Option<String>,
    /// The environment.
    pub environment: Option<String>,
}

/// Why a request was refused (a response extension set by [`AppError`]).
#[derive(Clone, Debug)]
pub(crate) struct RefusedWith(pub String);

/// What the route `route` (as matched) does with `method`. Every route of
/// the API is in this table; `None` for one that is not.
pub fn action_of(method: &Method, route: &str) -> Option<Action<'static>> {
    let action = match (method.as_str(), route) {
        ("GET", "/api/tokens" | "/api/audit" | "/api/audit/verify") => Action::Administer,
        ("POST", "/api/tokens" | "/api/tokens/{id}/revoke" | "/api/reload") => Action::Administer,
        ("GET", "/metrics" | "/api/runs" | "/api/runs/{id}" | "/api/evidence/{sha}") => {
            Action::Read
        }
        ("GET", "/api/environments" | "/api/environments/{env}/history" | "/api/dlq") => {
            Action::Read
        }
        ("POST", "/api/events") => Action::Submit,
        ("POST", "/api/runs/{id}/decisions") => Action::Decide { environment: None },
        ("POST", "/api/environments/{env}/release") => Action::Release { environment: None },
        ("POST", "/api/runs/{id}/cancel") => Action::Cancel { environment: None },
        (
            "POST",
            "/api/runs/{id}/retry" | "/api/promotions" | "/api/environments/{env}/rollback",
        ) => Action::Start { environment: None },
        ("POST", "/api/dlq/{id}/retry" | "/api/queue/redrive") => Action::Redrive,
        ("GET", "/api/runs/{id}/backup" | "/api/approvals") => Action::Read,
        ("POST", "/api/runs/{id}/restore") => Action::Restore { environment: None },
        _ => return None,
    };
    Some(action)
}

/// Refuses a request a web page could have made: an `Origin` other than
/// the server's own `Host`, or a body that is not JSON (a form or
/// `text/plain` POST needs no CORS preflight).
pub fn cross_site(method: &Method, headers: &HeaderMap) -> Result<(), (StatusCode, String)> {
    if let Some(origin) = headers.get(header::ORIGIN) {
        let origin = origin.to_str().unwrap_or("");
        let host = headers
            .get(header::HOST)
            .and_then(|h| h.to_str().ok())
            .unwrap_or("");
        let origin_host = origin
            .split_once("://")
            .map_or("", |(_, rest)| rest.trim_end_matches('/'));
        if host.is_empty() || !origin_host.eq_ignore_ascii_case(host) {
            return Err((
                StatusCode::FORBIDDEN,
                "cross-origin requests are refused (the Origin header is not this server)".into(),
            ));
        }
    }
    let has_body = headers
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .is_none_or(|len| len.trim() != "0")
        && (headers.contains_key(header::CONTENT_LENGTH)
            || headers.contains_key(header::TRANSFER_ENCODING));
    if *method != Method::GET && has_body {
        let json = headers
            .get(header::CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.split(';').next())
            .is_some_and(|v| v.trim().eq_ignore_ascii_case("application/json"));
        if !json {
            return Err((
                StatusCode::UNSUPPORTED_MEDIA_TYPE,
                "the body must be sent with `Content-Type: application/json`".into(),
            ));
        }
    }
    Ok(())
}

/// The caller of an unauthenticated server (`--insecure-no-auth`).
fn anonymous_admin() -> Caller {
    Caller {
        user: "anonymous".into(),
        token_id: "none (--insecure-no-auth)".into(),
        role: Role::Admin,
        environments: Vec::new(),
    }
}

/// The middleware.
pub(crate) async fn guard(
    State(state): State<AppState>,
    mut request: Request,
    next: Next,
) -> Response {
    let access = &state.access;
    let method = request.method().clone();
    let route = request
        .extensions()
        .get::<MatchedPath>()
        .map(|m| m.as_str().to_string())
        .unwrap_or_default();
    let path = request.uri().path().to_string();
    let Some(action) = action_of(&method, &route) else {
        return AppError(StatusCode::NOT_FOUND, format!("no route {method} {path}"))
            .into_response();
    };
    if route == "/metrics" && access.public_metrics {
        return next.run(request).await;
    }
    let attempt = format!("{method} {path}");
    if let Err((status, why)) = cross_site(&method, request.headers()) {
        record(
            access,
            "anonymous",
            "a cross-site request",
            &attempt,
            None,
            status,
            &why,
        )
        .await;
        return AppError(status, why).into_response();
    }
    let caller = if access.insecure {
        anonymous_admin()
    } else {
        let header = request
            .headers()
            .get(header::AUTHORIZATION)
            .map(|v| v.to_str().unwrap_or("(not text)"));
        match access.tokens.authenticate(header).await {
            Ok(caller) => caller,
            Err(e) => {
                let status = StatusCode::UNAUTHORIZED;
                record(
                    access,
                    "anonymous",
                    "no valid token",
                    &attempt,
                    None,
                    status,
                    &e.to_string(),
                )
                .await;
                return AppError(status, e.to_string()).into_response();
            }
        }
    };
    let via = format!("token {}", caller.token_id);
    if let Err(why) = caller.allows(&action) {
        let status = StatusCode::FORBIDDEN;
        record(access, &caller.user, &via, &attempt, None, status, &why).await;
        return AppError(status, why).into_response();
    }
    request.extensions_mut().insert(caller.clone());
    let response = next.run(request).await;
    let status = response.status();
    let changes = method != Method::GET;
    let refused = matches!(status, StatusCode::UNAUTHORIZED | StatusCode::FORBIDDEN);
    if changes || refused {
        let audited = response.extensions().get::<Audited>().cloned();
        let why = response
            .extensions()
            .get::<RefusedWith>()
            .map_or(String::new(), |r| r.0.clone());
        let (what, touched) = match &audited {
            Some(a) => (a.action.clone(), Some(a)),
            None => (attempt.clone(), None),
        };
        record(access, &caller.user, &via, &what, touched, status, &why).await;
    }
    response
}

/// Appends one record; a failure is logged, not answered (the request's
/// own outcome stands).
async fn record(
    access: &Access,
    who: &str,
    via: &str,
    action: &str,
    touched: Option<&Audited>,
    status: StatusCode,
    why: &str,
) {
    let outcome = Entry::outcome_of(status.as_u16(), why);
    let entry = Entry {
        who: who.into(),
        via: via.into(),
        action: action.into(),
        run: touched.and_then(|t| t.run.clone()),
        environment: touched.and_then(|t| t.environment.clone()),
        outcome,
    };
    if let Err(e) = access.audit.append(entry).await {
        tracing::error!(error = %e, "cannot write the audit record of {action} by {who}");
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::http::HeaderValue;

    fn headers(pairs: &[(header::HeaderName, &str)]) -> HeaderMap {
        let mut map = HeaderMap::new();
        for (name, value) in pairs {
            map.insert(name.clone(), HeaderValue::from_str(value).expect("header"));
        }
        map
    }

    #[test]
    fn every_mutation_needs_more_than_a_viewer() {
        let routes = [
            "/api/events",
            "/api/runs/{id}/decisions",
            "/api/environments/{env}/release",
            "/api/runs/{id}/cancel",
            "/api/runs/{id}/retry",
            "/api/promotions",
            "/api/environments/{env}/rollback",
            "/api/dlq/{id}/retry",
            "/api/queue/redrive",
            "/api/tokens",
            "/api/tokens/{id}/revoke",
            "/api/runs/{id}/restore",
        ];
        for route in routes {
            let action = action_of(&Method::POST, route).expect(route);
            assert!(action.least_role() > Role::Viewer, "{route}");
        }
        assert_eq!(action_of(&Method::GET, "/api/runs"), Some(Action::Read));
        assert_eq!(
            action_of(&Method::GET, "/api/audit"),
            Some(Action::Administer)
        );
        assert_eq!(action_of(&Method::DELETE, "/api/runs/{id}"), None);
        let restore = action_of(&Method::POST, "/api/runs/{id}/restore").expect("restore");
        assert_eq!(restore.least_role(), Role::Admin);
    }

    #[test]
    fn a_foreign_origin_or_a_non_json_body_is_refused() {
        let post = Method::POST;
        let same = headers(&[
            (header::HOST, "127.0.0.1:8420"),
            (header::ORIGIN, "http://127.0.0.1:8420"),
            (header::CONTENT_LENGTH, "2"),
            (header::CONTENT_TYPE, "application/json; charset=utf-8"),
        ]);
        assert!(cross_site(&post, &same).is_ok());
        let foreign = headers(&[
            (header::HOST, "127.0.0.1:8420"),
            (header::ORIGIN, "https://evil.example"),
        ]);
        assert_eq!(
            cross_site(&post, &foreign).expect_err("refused").0,
            StatusCode::FORBIDDEN
        );
        let plain = headers(&[
            (header::CONTENT_LENGTH, "10"),
            (header::CONTENT_TYPE, "text/plain"),
        ]);
        assert_eq!(
            cross_site(&post, &plain).expect_err("refused").0,
            StatusCode::UNSUPPORTED_MEDIA_TYPE
        );
        let untyped = headers(&[(header::CONTENT_LENGTH, "10")]);
        assert!(cross_site(&post, &untyped).is_err());
        let empty = headers(&[(header::CONTENT_LENGTH, "0")]);
        assert!(cross_site(&post, &empty).is_ok());
        assert!(cross_site(&Method::GET, &HeaderMap::new()).is_ok());
    }
}
