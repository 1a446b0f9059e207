//! Bearer tokens: random, shown once, stored only as a SHA-256 hash, each
//! with a user, a role, optional environments, an expiry and revocation.
//!
//! A token reads `gantry_{id}_{secret}`: the id (16 hex digits) finds its
//! item, the secret (64 hex digits, 256 random bits) proves it. Tokens are
//! items of the partition `auth/tokens`, sorted by id.

use std::sync::Arc;

use gantry_store::{Clock, Error, Item, Key, ListQuery, Precondition, Store, Write};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::role::{Caller, Role};

/// Every token starts with this.
pub const TOKEN_PREFIX: &str = "gantry_";
/// The id of the admin token given at start (`--admin-token-file`).
pub const BOOTSTRAP_ID: &str = "bootstrap";
/// The user of the admin token given at start.
pub const BOOTSTRAP_USER: &str = "admin";
/// The shortest admin token accepted at start.
pub const MIN_BOOTSTRAP_LEN: usize = 24;
/// The longest user name or environment name a token may carry.
pub const MAX_NAME: usize = 64;

const PARTITION: &str = "auth/tokens";

/// A token as stored: everything but its secret.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TokenRecord {
    /// Its id (16 hex digits).
    pub id: String,
    /// The user it acts as.
    pub user: String,
    /// Its role.
    pub role: Role,
    /// The environments it may decide and release in; all when empty.
    pub environments: Vec<String>,
    /// When it was issued (Unix ms).
    pub created_ms: u64,
    /// When it stops working (Unix ms), if ever.
    pub expires_ms: Option<u64>,
    /// When it was revoked (Unix ms).
    pub revoked_ms: Option<u64>,
    /// Who issued it.
    pub issued_by: String,
    /// SHA-256 of the secret, hex.
    #[serde(rename = "secret_sha256")]
    secret_hash: String,
}

impl TokenRecord {
    /// Whether it works at `now_ms`.
    pub fn is_active(&self, now_ms: u64) -> bool {
        self.revoked_ms.is_none() && self.expires_ms.is_none_or(|at| now_ms < at)
    }
}

/// What to issue.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct IssueRequest {
    /// The user it acts as.
    pub user: String,
    /// Its role.
    pub role: Role,
    /// The environments it may decide and release in; all when empty.
    #[serde(default)]
    pub environments: Vec<String>,
    /// How long it works, in seconds; forever when absent.
    #[serde(default)]
    pub expires_in_secs: Option<u64>,
}

impl IssueRequest {
    /// Checks the names: not empty, at most [`MAX_NAME`] bytes, printable,
    /// no whitespace. Errors name the field.
    pub fn check(&self) -> Result<(), String> {
        check_name("user", &self.user)?;
        for environment in &self.environments {
            check_name("environments", environment)?;
        }
        if self.expires_in_secs == Some(0) {
            return Err("expires_in_secs: must be more than 0".into());
        }
        Ok(())
    }
}

fn check_name(field: &str, value: &str) -> Result<(), String> {
    if value.is_empty() || value.len() > MAX_NAME {
        return Err(format!("{field}: must be 1 to {MAX_NAME} bytes"));
    }
    if value.chars().any(|c| c.is_control() || c.is_whitespace()) {
        return Err(format!(
            "{field}: no whitespace or control characters allowed"
        ));
    }
    Ok(())
}

/// A token just issued: the only time its secret is seen.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Issued {
    /// The bearer token.
    pub token: String,
    /// What was stored.
    pub record: TokenRecord,
}

/// Why a request is not authenticated (HTTP 401).
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum AuthError {
    /// No `Authorization` header.
    #[error("no token: send `Authorization: Bearer <token>` (GANTRY_TOKEN or --token for the CLI)")]
    Missing,
    /// Not a Gantry bearer token.
    #[error("the Authorization header is not `Bearer gantry_...`")]
    Malformed,
    /// No such token, or the wrong secret.
    #[error("unknown token")]
    Unknown,
    /// Revoked.
    #[error("token {0} was revoked")]
    Revoked(String),
    /// Expired.
    #[error("token {0} has expired")]
    Expired(String),
    /// The store could not answer.
    #[error("cannot check the token: {0}")]
    Unavailable(String),
}

/// Issues, lists, revokes and checks tokens.
pub struct Tokens {
    store: Arc<dyn Store>,
    clock: Arc<dyn Clock>,
    /// SHA-256 of the admin token given at start.
    bootstrap: Option<[u8; 32]>,
}

fn sha256(data: &[u8]) -> [u8; 32] {
    Sha256::digest(data).into()
}

/// Equal without an early exit on the first differing byte.
fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

fn random_hex(bytes: usize) -> Result<String, Error> {
    let mut buf = vec![0u8; bytes];
    getrandom::fill(&mut buf)
        .map_err(|e| Error::unavailable(format!("no randomness for a token: {e}")))?;
    Ok(hex::encode(buf))
}

fn decode(item: &Item) -> Result<TokenRecord, Error> {
    serde_json::from_slice(&item.value)
        .map_err(|e| Error::Corrupt(format!("token item {}: {e}", item.key)))
}

fn encode(record: &TokenRecord) -> Vec<u8> {
    serde_json::to_vec(record).unwrap_or_default()
}

impl Tokens {
    /// Tokens kept in `store`, timed by `clock`.
    pub fn new(store: Arc<dyn Store>, clock: Arc<dyn Clock>) -> Self {
        Tokens {
            store,
            clock,
            bootstrap: None,
        }
    }

    /// Also accepts `admin_token` as the admin `admin` (id `bootstrap`):
    /// how the first real tokens get issued. It must be at least
    /// [`MIN_BOOTSTRAP_LEN`] printable characters.
    pub fn with_bootstrap(mut self, admin_token: &str) -> Result<Self, String> {
        let token = admin_token.trim();
        if token.len() < MIN_BOOTSTRAP_LEN || token.chars().any(|c| !c.is_ascii_graphic()) {
            return Err(format!(
                "the admin token must be at least {MIN_BOOTSTRAP_LEN} printable ASCII characters"
            ));
        }
        self.bootstrap = Some(sha256(token.as_bytes()));
        Ok(self)
    }

    /// Issues a token for `request`, by `issued_by`.
    pub async fn issue(&self, request: &IssueRequest, issued_by: &str) -> Result<Issued, Error> {
        request.check().map_err(Error::Invalid)?;
        let id = random_hex(8)?;
        let secret = random_hex(32)?;
        let now = self.clock.now_ms();
        let record = TokenRecord {
            id: id.clone(),
            user: request.user.clone(),
            role: request.role,
            environments: request.environments.clone(),
            created_ms: now,
            expires_ms: request
                .expires_in_secs
                .map(|secs| now.saturating_add(secs.saturating_mul(1000))),
            revoked_ms: None,
            issued_by: issued_by.to_string(),
            secret_hash: hex::encode(sha256(secret.as_bytes())),
        };
        self.store
            .write(vec![Write::put(
                Key::new(PARTITION, &id),
                encode(&record),
                Precondition::DoesNotExist,
            )])
            .await?;
        Ok(Issued {
            token: format!("{TOKEN_PREFIX}{id}_{secret}"),
            record,
        })
    }

    /// Every token issued, revoked and expired ones too, by id.
    pub async fn list(&self) -> Result<Vec<TokenRecord>, Error> {
        let mut records = Vec::new();
        let mut after = None;
        loop {
            let page = self
                .store
                .list(&ListQuery::partition(PARTITION, 500).after(after))
                .await?;
            for item in &page.items {
                records.push(decode(item)?);
            }
            match page.next {
                Some(next) => after = Some(next),
                None => return Ok(records),
            }
        }
    }

    /// Revokes token `id`; `None` when there is no such token. Revoking a
    /// revoked token changes nothing.
    pub async fn revoke(&self, id: &str) -> Result<Option<TokenRecord>, Error> {
        if id.is_empty() || id.len() > MAX_NAME {
            return Ok(None);
        }
        loop {
            let Some(item) = self.store.get(&Key::new(PARTITION, id)).await? else {
                return Ok(None);
            };
            let mut record = decode(&item)?;
            if record.revoked_ms.is_some() {
                return Ok(Some(record));
            }
            record.revoked_ms = Some(self.clock.now_ms());
            let write = Write::put(
                item.key.clone(),
                encode(&record),
                Precondition::MatchesVersion(item.version),
            );
            match self.store.write(vec![write]).await {
                Ok(()) => return Ok(Some(record)),
                Err(Error::Conflict { .. }) => continue,
                Err(e) => return Err(e),
            }
        }
    }

    /// Who `header` (an `Authorization` header's value) proves the caller
    /// is.
    pub async fn authenticate(&self, header: Option<&str>) -> Result<Caller, AuthError> {
        let header = header.ok_or(AuthError::Missing)?;
        let token = header
            .strip_prefix("Bearer ")
            .or_else(|| header.strip_prefix("bearer "))
            .map(str::trim)
            .ok_or(AuthError::Malformed)?;
        if let Some(bootstrap) = &self.bootstrap
            && constant_time_eq(&sha256(token.as_bytes()), bootstrap)
        {
            return Ok(Caller {
                user: BOOTSTRAP_USER.into(),
                token_id: BOOTSTRAP_ID.into(),
                role: Role::Admin,
                environments: Vec::new(),
            });
        }
        let (id, secret) = token
            .strip_prefix(TOKEN_PREFIX)
            .and_then(|rest| rest.split_once('_'))
            .ok_or(AuthError::Malformed)?;
        if id.len() != 16 || !id.bytes().all(|b| b.is_ascii_hexdigit()) {
            return Err(AuthError::Malformed);
        }
        let item = self
            .store
            .get(&Key::new(PARTITION, id))
            .await
            .map_err(|e| AuthError::Unavailable(e.to_string()))?
            .ok_or(AuthError::Unknown)?;
        let record = decode(&item).map_err(|e| AuthError::Unavailable(e.to_string()))?;
        let given = hex::encode(sha256(secret.as_bytes()));
        if !constant_time_eq(given.as_bytes(), record.secret_hash.as_bytes()) {
            return Err(AuthError::Unknown);
        }
        if record.revoked_ms.is_some() {
            return Err(AuthError::Revoked(record.id));
        }
        if !record.is_active(self.clock.now_ms()) {
            return Err(AuthError::Expired(record.id));
        }
        Ok(Caller {
            user: record.user,
            token_id: record.id,
            role: record.role,
            environments: record.environments,
        })
    }
}
