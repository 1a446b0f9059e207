//! Serving a router over TCP with read deadlines. A client that has not
//! sent its request headers within the deadline, or has not sent the whole
//! body within the deadline once the headers are in, is cut off: stalled
//! connections cannot pile up and hold file descriptors or memory.

use std::future::Future;
use std::time::Duration;

use axum::Router;
use axum::body::Body;
use axum::extract::{Request, State};
use axum::http::{HeaderValue, StatusCode, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Json, Response};
use http_body_util::{BodyExt, LengthLimitError, Limited};
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::server::graceful::GracefulShutdown;
use hyper_util::service::TowerToHyperService;
use serde_json::json;

/// How long a client may take to send what it sends.
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    /// The deadline for the request line and headers, and then again for
    /// the whole body.
    pub read_timeout: Duration,
    /// The largest body read; a larger one is refused with 413.
    pub max_body: usize,
}

/// How long the server waits for open requests to finish once asked to
/// stop.
const DRAIN: Duration = Duration::from_secs(10);

/// Serves `router` on `listener` under `limits` until `shutdown`
/// completes, then lets open requests finish (at most [`DRAIN`]).
pub async fn serve(
    listener: tokio::net::TcpListener,
    router: Router,
    limits: Limits,
    shutdown: impl Future<Output = ()>,
) {
    let router = router.layer(axum::middleware::from_fn_with_state(limits, read_body));
    let mut http = hyper::server::conn::http1::Builder::new();
    http.timer(TokioTimer::new())
        .header_read_timeout(limits.read_timeout);
    let graceful = GracefulShutdown::new();
    let mut shutdown = std::pin::pin!(shutdown);
    loop {
        let stream = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok((stream, _)) => stream,
                // Out of file descriptors, mostly: wait and try again.
                Err(e) => {
                    tracing::warn!(error = %e, "cannot accept a connection");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                }
            },
            () = &mut shutdown => break,
        };
        let _ = stream.set_nodelay(true);
        let service = TowerToHyperService::new(router.clone());
        let connection = graceful.watch(http.serve_connection(TokioIo::new(stream), service));
        tokio::spawn(async move {
            if let Err(e) = connection.await {
                tracing::debug!(error = %e, "connection closed");
            }
        });
    }
    drop(listener);
    if tokio::time::timeout(DRAIN, graceful.shutdown())
        .await
        .is_err()
    {
        tracing::warn!("requests still open after {DRAIN:?}; stopping anyway");
    }
}

/// Reads the whole body within the deadline and at most `max_body` bytes,
/// before any handler sees the request.
async fn read_body(State(limits): State<Limits>, request: Request, next: Next) -> Response {
    let (parts, body) = request.into_parts();
    let read = Limited::new(body, limits.max_body).collect();
    let bytes = match tokio::time::timeout(limits.read_timeout, read).await {
        Ok(Ok(collected)) => collected.to_bytes(),
        Ok(Err(e)) if e.downcast_ref::<LengthLimitError>().is_some() => {
            return refuse(
                StatusCode::PAYLOAD_TOO_LARGE,
                format!("the request body is larger than {} bytes", limits.max_body),
            );
        }
        Ok(Err(e)) => {
            return refuse(
                StatusCode::BAD_REQUEST,
                format!("the request body could not be read: {e}"),
            );
        }
        Err(_) => {
            return refuse(
                StatusCode::REQUEST_TIMEOUT,
                format!(
                    "the request body did not arrive within {} s",
                    limits.read_timeout.as_secs_f64()
                ),
            );
        }
    };
    next.run(Request::from_parts(parts, Body::from(bytes)))
        .await
}

/// An error answer that also closes the connection: what is left of the
/// request on it cannot be trusted.
fn refuse(status: StatusCode, message: String) -> Response {
    tracing::info!(status = status.as_u16(), %message, "request refused");
    let mut response = (status, Json(json!({ "error": message }))).into_response();
    response
        .headers_mut()
        .insert(header::CONNECTION, HeaderValue::from_static("close"));
    response
}
