//! Outbound HTTP to the origins the manifest allows.

use crate::bindings::capabilities::gantry::plugin::http as wit;
pub use wit::{HttpError, Method, Request, Response};

/// Sends `request`. Redirects are not followed.
pub fn send(request: &Request) -> Result<Response, HttpError> {
    wit::send(request)
}

/// Sends a GET to `url` with the host's default timeout.
pub fn get(url: &str) -> Result<Response, HttpError> {
    send(&Request {
        method: Method::Get,
        url: url.to_string(),
        headers: Vec::new(),
        body: None,
        timeout_ms: None,
    })
}

/// Sends a POST of a JSON document to `url`.
pub fn post_json(url: &str, json: &str, headers: &[(&str, &str)]) -> Result<Response, HttpError> {
    let mut all = vec![("content-type".to_string(), "application/json".to_string())];
    all.extend(headers.iter().map(|(k, v)| (k.to_string(), v.to_string())));
    send(&Request {
        method: Method::Post,
        url: url.to_string(),
        headers: all,
        body: Some(json.as_bytes().to_vec()),
        timeout_ms: None,
    })
}

impl Response {
    /// The body as text, with invalid UTF-8 replaced.
    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }

    /// The first value of header `name` (case-insensitive).
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }
}

impl HttpError {
    /// What went wrong, for logs and failure reasons.
    pub fn describe(&self) -> String {
        match self {
            HttpError::Denied(m) => format!("denied: {m}"),
            HttpError::Timeout(m) => format!("timeout: {m}"),
            HttpError::TooLarge(m) => format!("response too large: {m}"),
            HttpError::InvalidRequest(m) => format!("invalid request: {m}"),
            HttpError::Transport(m) => format!("transport error: {m}"),
        }
    }
}
