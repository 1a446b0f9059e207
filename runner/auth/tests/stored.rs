//! Tokens and the audit log on the embedded store: what is stored, what
//! proves a caller, and what tampering `verify` finds.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use gantry_auth::token::TOKEN_PREFIX;
use gantry_auth::{AuditLog, AuthError, Entry, IssueRequest, Role, Tokens};
use gantry_store::{Clock, Key, ListQuery, Precondition, Store, Write};
use gantry_store_sqlite::{Options, SqliteBackend};

struct TestClock(AtomicU64);

impl Clock for TestClock {
    fn now_ms(&self) -> u64 {
        self.0.load(Ordering::SeqCst)
    }
}

fn open(dir: &std::path::Path) -> (Arc<dyn Store>, Arc<TestClock>) {
    let clock = Arc::new(TestClock(AtomicU64::new(1_000_000)));
    let backend = SqliteBackend::open(
        dir,
        Options {
            fsync: false,
            clock: clock.clone(),
        },
    )
    .expect("open the store");
    (Arc::new(backend), clock)
}

fn bearer(token: &str) -> String {
    format!("Bearer {token}")
}

#[tokio::test]
async fn a_token_proves_its_user_until_it_expires_or_is_revoked() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (store, clock) = open(dir.path());
    let tokens = Tokens::new(store.clone(), clock.clone());
    let request = IssueRequest {
        user: "Bob".into(),
        role: Role::Approver,
        environments: vec!["production".into()],
        expires_in_secs: Some(60),
    };
    let issued = tokens.issue(&request, "admin").await.expect("issue");
    assert!(issued.token.starts_with(TOKEN_PREFIX));

    // Only the hash is stored.
    let stored = store
        .list(&ListQuery::partition("auth/tokens", 10))
        .await
        .expect("list");
    let raw = String::from_utf8_lossy(&stored.items[0].value).to_string();
    let secret = issued.token.rsplit('_').next().expect("secret");
    assert!(!raw.contains(secret), "the secret is stored: {raw}");

    let caller = tokens
        .authenticate(Some(&bearer(&issued.token)))
        .await
        .expect("authenticate");
    assert_eq!(caller.user, "Bob");
    assert_eq!(caller.role, Role::Approver);
    assert_eq!(caller.environments, vec!["production".to_string()]);

    // A wrong secret under a real id, a missing header, another scheme.
    let last = if issued.token.ends_with('0') {
        "1"
    } else {
        "0"
    };
    let forged = format!("{}{last}", &issued.token[..issued.token.len() - 1]);
    assert_eq!(
        tokens.authenticate(Some(&bearer(&forged))).await,
        Err(AuthError::Unknown)
    );
    assert_eq!(tokens.authenticate(None).await, Err(AuthError::Missing));
    assert_eq!(
        tokens.authenticate(Some("Basic Ym9iOmJvYg==")).await,
        Err(AuthError::Malformed)
    );

    clock.0.fetch_add(61_000, Ordering::SeqCst);
    assert_eq!(
        tokens.authenticate(Some(&bearer(&issued.token))).await,
        Err(AuthError::Expired(issued.record.id.clone()))
    );

    let forever = tokens
        .issue(
            &IssueRequest {
                user: "carol".into(),
                role: Role::Viewer,
                environments: vec![],
                expires_in_secs: None,
            },
            "admin",
        )
        .await
        .expect("issue");
    let revoked = tokens
        .revoke(&forever.record.id)
        .await
        .expect("revoke")
        .expect("found");
    assert!(revoked.revoked_ms.is_some());
    assert_eq!(
        tokens.authenticate(Some(&bearer(&forever.token))).await,
        Err(AuthError::Revoked(forever.record.id.clone()))
    );
    assert_eq!(
        tokens.revoke("0000000000000000").await.expect("revoke"),
        None
    );
    assert_eq!(tokens.list().await.expect("list").len(), 2);
}

#[tokio::test]
async fn the_bootstrap_token_is_an_admin_and_must_be_long() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (store, clock) = open(dir.path());
    assert!(
        Tokens::new(store.clone(), clock.clone())
            .with_bootstrap("short")
            .is_err()
    );
    let secret = "a-long-enough-admin-token-0123456789";
    let tokens = Tokens::new(store, clock)
        .with_bootstrap(secret)
        .expect("bootstrap");
    let caller = tokens
        .authenticate(Some(&bearer(secret)))
        .await
        .expect("authenticate");
    assert_eq!(caller.role, Role::Admin);
    assert_eq!(
        tokens
            .authenticate(Some(&bearer("a-long-enough-admin-token-012345678X")))
            .await,
        Err(AuthError::Malformed)
    );
}

fn entry(who: &str, outcome: &str) -> Entry {
    Entry {
        who: who.into(),
        via: "token 0123456789abcdef".into(),
        action: "approve".into(),
        run: Some("run-1".into()),
        environment: Some("production".into()),
        outcome: outcome.into(),
    }
}

async fn log_of_five(store: &Arc<dyn Store>, clock: &Arc<TestClock>) -> AuditLog {
    let log = AuditLog::new(store.clone(), clock.clone());
    for i in 0..5 {
        clock.0.fetch_add(1000, Ordering::SeqCst);
        log.append(entry(&format!("user{i}"), "ok"))
            .await
            .expect("append");
    }
    log
}

#[tokio::test]
async fn the_audit_log_verifies_and_pages_newest_first() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (store, clock) = open(dir.path());
    let log = log_of_five(&store, &clock).await;
    assert_eq!(log.verify().await.expect("verify"), Ok(5));

    let (first, next) = log.page(0, 2, None).await.expect("page");
    let seqs: Vec<u64> = first.iter().map(|r| r.body.seq).collect();
    assert_eq!(seqs, vec![5, 4]);
    let (second, _) = log.page(0, 2, next).await.expect("page");
    assert_eq!(second[0].body.seq, 3);
    // Only the last two seconds.
    let now = clock.now_ms();
    let (recent, next) = log.page(now - 1500, 10, None).await.expect("page");
    assert_eq!(recent.len(), 2);
    assert_eq!(next, None);
}

#[tokio::test]
async fn an_edited_or_removed_record_is_named() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (store, clock) = open(dir.path());
    let log = log_of_five(&store, &clock).await;
    let key = Key::new("auth/audit", format!("{:020}", 3));
    let item = store.get(&key).await.expect("get").expect("record 3");
    let edited = String::from_utf8_lossy(&item.value).replace("user2", "mallory");
    store
        .write(vec![Write::put(
            key.clone(),
            edited.into_bytes(),
            Precondition::None,
        )])
        .await
        .expect("edit");
    let broken = log.verify().await.expect("verify").expect_err("refused");
    assert_eq!(broken.seq, 3, "{broken}");

    store
        .write(vec![Write::put(
            key.clone(),
            item.value,
            Precondition::None,
        )])
        .await
        .expect("restore");
    assert_eq!(log.verify().await.expect("verify"), Ok(5));
    store
        .write(vec![Write::delete(
            Key::new("auth/audit", format!("{:020}", 4)),
            Precondition::None,
        )])
        .await
        .expect("delete");
    let broken = log.verify().await.expect("verify").expect_err("refused");
    assert_eq!(broken.seq, 4, "{broken}");
    assert!(broken.to_string().contains("missing"), "{broken}");
}

#[tokio::test]
async fn concurrent_appends_keep_one_chain() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (store, clock) = open(dir.path());
    // Two logs over one store: two processes' worth of appenders.
    let a = Arc::new(AuditLog::new(store.clone(), clock.clone()));
    let b = Arc::new(AuditLog::new(store.clone(), clock.clone()));
    let mut tasks = Vec::new();
    for i in 0..40 {
        let log = if i % 2 == 0 { a.clone() } else { b.clone() };
        tasks.push(tokio::spawn(async move {
            log.append(entry(&format!("u{i}"), "ok")).await
        }));
    }
    for task in tasks {
        task.await.expect("join").expect("append");
    }
    assert_eq!(a.verify().await.expect("verify"), Ok(40));
}
