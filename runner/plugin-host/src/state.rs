//! The per-call store data, and the host side of every capability.
//!
//! One `CallState` lives in one fresh `Store` for one call, so nothing a guest
//! does survives into the next call. It holds only what the manifest grants
//! for the call's environment: the allowed origins, and the values of the
//! granted secrets (other secrets never enter the store).

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use wasmtime::component::ResourceTable;
use wasmtime_wasi::p2::pipe::MemoryOutputPipe;
use wasmtime_wasi::{FsPerms, WasiCtx, WasiCtxView, WasiView};

use crate::bindings::capabilities::gantry::plugin::{clock, http, log, secrets, types};
use crate::bindings::migration::gantry::plugin::sql;
use crate::limits::MemoryLimiter;
use crate::manifest::Origin;
use crate::types::LogRecord;
use gantry_plugin_api::Masker;
use gantry_sql_pg::{Session, Value};

/// Caps that apply to every call, whatever the manifest says.
#[derive(Debug, Clone, Copy)]
pub(crate) struct IoCaps {
    /// Total bytes of log messages kept per call.
    pub log_bytes: usize,
    /// Bytes of one HTTP response body.
    pub response_bytes: usize,
    /// Timeout of an HTTP request that names none.
    pub default_http_timeout: Duration,
}

/// What the manifest grants for one call's environment.
pub(crate) struct Grants {
    pub origins: Vec<Origin>,
    /// Granted secret names, with their values where they have one.
    pub secrets: BTreeMap<String, Option<String>>,
}

/// What a migration call is bound to beyond the manifest's grants.
#[derive(Default)]
pub struct Binding {
    /// The session its `sql` statements run in; without one they fail
    /// with "no database is bound".
    pub db: Option<Session>,
    /// A host directory the guest reads at [`MIGRATIONS_DIR`], read-only,
    /// for this call only.
    pub files: Option<PathBuf>,
}

/// Where a migration call sees [`Binding::files`].
pub const MIGRATIONS_DIR: &str = "/migrations";

/// Who is calling: the labels on every log line and denial.
pub(crate) struct CallLabels {
    pub plugin: Arc<str>,
    pub environment: String,
    pub run_id: String,
}

/// The data of one call's `Store`.
pub(crate) struct CallState {
    wasi: WasiCtx,
    table: ResourceTable,
    pub limiter: MemoryLimiter,
    pub stderr: MemoryOutputPipe,
    grants: Grants,
    labels: CallLabels,
    caps: IoCaps,
    deadline: Instant,
    http: reqwest::Client,
    logs: LogBuffer,
    /// The granted secrets' values, masked in whatever the call leaves.
    pub masker: Masker,
    /// The database session of a migration call.
    pub db: Option<Session>,
}

impl CallState {
    pub fn new(
        grants: Grants,
        labels: CallLabels,
        caps: IoCaps,
        limiter: MemoryLimiter,
        deadline: Instant,
        http: reqwest::Client,
        binding: Binding,
    ) -> wasmtime::Result<Self> {
        // Capped, so a guest printing forever cannot grow the host.
        let stderr = MemoryOutputPipe::new(16 * 1024);
        // No env vars, no args, no sockets, no DNS, and no directory but a
        // migration's own files, read-only: the WASI imports link, but
        // every ambient capability is denied.
        let mut wasi = WasiCtx::builder();
        wasi.stderr(stderr.clone())
            .allow_tcp(false)
            .allow_udp(false)
            .allow_ip_name_lookup(false);
        if let Some(files) = &binding.files {
            wasi.preopened_dir(files, MIGRATIONS_DIR, FsPerms::ReadOnly)?;
        }
        let wasi = wasi.build();
        let masker = Masker::new(grants.secrets.values().flatten().map(String::as_str));
        Ok(CallState {
            db: binding.db,
            masker,
            wasi,
            table: ResourceTable::new(),
            limiter,
            stderr,
            grants,
            labels,
            caps,
            deadline,
            http,
            logs: LogBuffer::new(caps.log_bytes),
        })
    }

    /// The call's log records, ending with a note of any dropped ones.
    pub fn take_logs(&mut self) -> Vec<LogRecord> {
        self.logs.finish()
    }

    /// Records and logs a denied capability.
    fn deny(&mut self, capability: &str, name: &str, why: &str) {
        tracing::warn!(
            plugin = %self.labels.plugin,
            environment = %self.labels.environment,
            run = %self.labels.run_id,
            capability,
            name,
            "plugin denied: {why}"
        );
        self.logs.push_host(
            "warn",
            format!("denied {capability} `{name}`: {why}"),
            vec![
                ("capability".into(), capability.into()),
                ("name".into(), name.into()),
                ("environment".into(), self.labels.environment.clone()),
            ],
        );
    }
}

impl WasiView for CallState {
    fn ctx(&mut self) -> WasiCtxView<'_> {
        WasiCtxView {
            ctx: &mut self.wasi,
            table: &mut self.table,
        }
    }
}

impl types::Host for CallState {}

impl log::Host for CallState {
    fn log(&mut self, level: log::Level, message: String, fields: Vec<(String, String)>) {
        let level = match level {
            log::Level::Trace => "trace",
            log::Level::Debug => "debug",
            log::Level::Info => "info",
            log::Level::Warn => "warn",
            log::Level::Error => "error",
        };
        let message = self.masker.mask_string(message);
        let fields = fields
            .into_iter()
            .map(|(name, value)| {
                (
                    self.masker.mask_string(name),
                    self.masker.mask_string(value),
                )
            })
            .collect();
        if let Some(record) = self.logs.push_guest(level, message, fields) {
            tracing::info!(
                plugin = %self.labels.plugin,
                environment = %self.labels.environment,
                run = %self.labels.run_id,
                level,
                fields = ?record.fields,
                "plugin log: {}",
                record.message
            );
        }
    }
}

impl secrets::Host for CallState {
    fn get(&mut self, name: String) -> Option<String> {
        match self.grants.secrets.get(&name) {
            Some(value) => value.clone(),
            None => {
                let why = format!(
                    "the manifest grants no secret `{name}` in environment `{}`",
                    self.labels.environment
                );
                self.deny("secret", &name, &why);
                None
            }
        }
    }
}

impl clock::Host for CallState {
    fn now_ms(&mut self) -> u64 {
        SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
            .unwrap_or(0)
    }
}

impl http::Host for CallState {
    async fn send(&mut self, request: http::Request) -> Result<http::Response, http::HttpError> {
        use http::HttpError;

        let url = url::Url::parse(&request.url)
            .map_err(|e| HttpError::InvalidRequest(format!("{}: {e}", request.url)))?;
        let origin = Origin::of(&url).map_err(HttpError::InvalidRequest)?;
        if !self.grants.origins.contains(&origin) {
            let why = format!("{origin} is not in the manifest's http.allow list");
            self.deny("http", &origin.to_string(), &why);
            return Err(HttpError::Denied(why));
        }
        let remaining = self.deadline.saturating_duration_since(Instant::now());
        let asked = request
            .timeout_ms
            .map(|ms| Duration::from_millis(u64::from(ms)))
            .unwrap_or(self.caps.default_http_timeout);
        let timeout = asked.min(remaining);
        let method = match request.method {
            http::Method::Get => reqwest::Method::GET,
            http::Method::Head => reqwest::Method::HEAD,
            http::Method::Post => reqwest::Method::POST,
            http::Method::Put => reqwest::Method::PUT,
            http::Method::Patch => reqwest::Method::PATCH,
            http::Method::Delete => reqwest::Method::DELETE,
        };
        let mut builder = self.http.request(method, url.clone()).timeout(timeout);
        for (name, value) in &request.headers {
            builder = builder.header(name, value);
        }
        if let Some(body) = request.body {
            builder = builder.body(body);
        }
        let limit = self.caps.response_bytes;
        let exchange = async {
            let mut response = builder.send().await?;
            let status = response.status().as_u16();
            let headers = response
                .headers()
                .iter()
                .map(|(k, v)| {
                    (
                        k.to_string(),
                        String::from_utf8_lossy(v.as_bytes()).into_owned(),
                    )
                })
                .collect();
            let mut body = Vec::new();
            while let Some(chunk) = response.chunk().await? {
                if body.len() + chunk.len() > limit {
                    return Ok(Err(HttpError::TooLarge(format!(
                        "{url}: body exceeds the host's cap of {limit} bytes"
                    ))));
                }
                body.extend_from_slice(&chunk);
            }
            Ok(Ok(http::Response {
                status,
                headers,
                body,
            }))
        };
        match tokio::time::timeout(timeout, exchange).await {
            Ok(Ok(outcome)) => outcome,
            Ok(Err(e)) => Err(classify_transport(&url, timeout, e)),
            Err(_) => Err(HttpError::Timeout(format!(
                "{url}: no complete response within {} ms",
                timeout.as_millis()
            ))),
        }
    }
}

fn classify_transport(url: &url::Url, timeout: Duration, e: reqwest::Error) -> http::HttpError {
    if e.is_timeout() {
        http::HttpError::Timeout(format!(
            "{url}: no complete response within {} ms",
            timeout.as_millis()
        ))
    } else if e.is_builder() {
        http::HttpError::InvalidRequest(format!("{url}: {e}"))
    } else {
        let mut message = e.to_string();
        let mut source = std::error::Error::source(&e);
        while let Some(inner) = source {
            message.push_str(": ");
            message.push_str(&inner.to_string());
            source = inner.source();
        }
        http::HttpError::Transport(format!("{url}: {message}"))
    }
}

impl sql::Host for CallState {
    async fn execute(&mut self, statement: String, params: Vec<sql::Value>) -> Result<u64, String> {
        let db = self.db.as_ref().ok_or(NO_DATABASE)?;
        let params: Vec<Value> = params.into_iter().map(from_wit_value).collect();
        db.execute(&statement, &params)
            .await
            .map_err(|e| e.to_string())
    }

    async fn query(
        &mut self,
        statement: String,
        params: Vec<sql::Value>,
    ) -> Result<sql::Rows, String> {
        let db = self.db.as_ref().ok_or(NO_DATABASE)?;
        let params: Vec<Value> = params.into_iter().map(from_wit_value).collect();
        let rows = db
            .query(&statement, &params)
            .await
            .map_err(|e| e.to_string())?;
        Ok(sql::Rows {
            columns: rows.columns,
            rows: rows
                .rows
                .into_iter()
                .map(|row| row.into_iter().map(to_wit_value).collect())
                .collect(),
        })
    }
}

fn from_wit_value(value: sql::Value) -> Value {
    match value {
        sql::Value::Null => Value::Null,
        sql::Value::Boolean(b) => Value::Boolean(b),
        sql::Value::Integer(n) => Value::Integer(n),
        sql::Value::Double(x) => Value::Double(x),
        sql::Value::Text(t) => Value::Text(t),
        sql::Value::Bytes(b) => Value::Bytes(b),
    }
}

fn to_wit_value(value: Value) -> sql::Value {
    match value {
        Value::Null => sql::Value::Null,
        Value::Boolean(b) => sql::Value::Boolean(b),
        Value::Integer(n) => sql::Value::Integer(n),
        Value::Double(x) => sql::Value::Double(x),
        Value::Text(t) => sql::Value::Text(t),
        Value::Bytes(b) => sql::Value::Bytes(b),
    }
}

const NO_DATABASE: &str = "no database is bound to this step";

/// Log records of one call, capped by total message bytes.
struct LogBuffer {
    records: Vec<LogRecord>,
    bytes: usize,
    cap: usize,
    dropped: usize,
}

impl LogBuffer {
    /// Longest message kept from one record.
    const MAX_MESSAGE: usize = 4096;

    fn new(cap: usize) -> Self {
        LogBuffer {
            records: Vec::new(),
            bytes: 0,
            cap,
            dropped: 0,
        }
    }

    /// Keeps a guest record if it fits; returns it for tracing.
    fn push_guest(
        &mut self,
        level: &str,
        mut message: String,
        fields: Vec<(String, String)>,
    ) -> Option<&LogRecord> {
        truncate(&mut message, Self::MAX_MESSAGE);
        let size = message.len() + fields.iter().map(|(k, v)| k.len() + v.len()).sum::<usize>();
        if self.bytes + size > self.cap {
            self.dropped += 1;
            return None;
        }
        self.bytes += size;
        self.records.push(LogRecord {
            level: level.into(),
            message,
            fields,
            source: "guest".into(),
        });
        self.records.last()
    }

    /// Host records (denials) are always kept: they are few and they matter.
    fn push_host(&mut self, level: &str, message: String, fields: Vec<(String, String)>) {
        self.records.push(LogRecord {
            level: level.into(),
            message,
            fields,
            source: "host".into(),
        });
    }

    fn finish(&mut self) -> Vec<LogRecord> {
        if self.dropped > 0 {
            let note = format!(
                "{} log records dropped: the log limit of {} bytes per call was reached",
                self.dropped, self.cap
            );
            self.push_host("warn", note, Vec::new());
            self.dropped = 0;
        }
        std::mem::take(&mut self.records)
    }
}

/// Cuts `text` to at most `max` bytes on a character boundary.
fn truncate(text: &mut String, max: usize) {
    if text.len() > max {
        let mut end = max;
        while !text.is_char_boundary(end) {
            end -= 1;
        }
        text.truncate(end);
        text.push('…');
    }
}
