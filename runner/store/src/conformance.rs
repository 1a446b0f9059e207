//! The behaviour every backend must show; see [`crate::conformance_tests!`].
#![allow(clippy::unwrap_used, missing_docs)]

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use crate::{Backend, Checkpoint, Error, Outgoing, Precondition, Write};

const SHORT: Duration = Duration::from_millis(200);

/// Runs every property against fresh backends from `make`.
pub async fn suite<F, Fut>(make: F)
where
    F: Fn() -> Fut,
    Fut: Future<Output = Arc<dyn Backend>>,
{
    versions_grow_and_preconditions_hold(make().await).await;
    batches_are_all_or_nothing(make().await).await;
    list_is_by_prefix_in_key_order(make().await).await;
    delayed_messages_wait(make().await).await;
    visibility_hides_and_returns(make().await).await;
    dead_letter_after_max_receives_and_redrive(make().await).await;
    checkpoint_is_atomic(make().await).await;
    batched_checkpoints_are_independent(make().await).await;
    stale_receipts_are_refused(make().await).await;
}

async fn versions_grow_and_preconditions_hold(b: Arc<dyn Backend>) {
    let v = b
        .write(vec![Write::put(
            "a",
            b"1".to_vec(),
            Precondition::DoesNotExist,
        )])
        .await
        .unwrap();
    assert_eq!(v, vec![1]);
    let again = b
        .write(vec![Write::put(
            "a",
            b"x".to_vec(),
            Precondition::DoesNotExist,
        )])
        .await;
    assert!(matches!(again, Err(Error::Conflict { .. })), "{again:?}");
    let v = b
        .write(vec![Write::put(
            "a",
            b"2".to_vec(),
            Precondition::MatchesVersion(1),
        )])
        .await
        .unwrap();
    assert_eq!(v, vec![2]);
    let stale = b
        .write(vec![Write::put(
            "a",
            b"3".to_vec(),
            Precondition::MatchesVersion(1),
        )])
        .await;
    assert!(matches!(stale, Err(Error::Conflict { .. })), "{stale:?}");
    let item = b.get("a").await.unwrap().unwrap();
    assert_eq!((item.value.as_slice(), item.version), (&b"2"[..], 2));
    let v = b
        .write(vec![Write::put("a", b"4".to_vec(), Precondition::None)])
        .await
        .unwrap();
    assert_eq!(v, vec![3]);
    let missing = b
        .write(vec![Write::put(
            "b",
            b"1".to_vec(),
            Precondition::MatchesVersion(1),
        )])
        .await;
    assert!(
        matches!(missing, Err(Error::Conflict { .. })),
        "{missing:?}"
    );
    b.write(vec![Write::delete("a", Precondition::MatchesVersion(3))])
        .await
        .unwrap();
    assert_eq!(b.get("a").await.unwrap(), None);
}

async fn batches_are_all_or_nothing(b: Arc<dyn Backend>) {
    b.write(vec![Write::put("x", b"1".to_vec(), Precondition::None)])
        .await
        .unwrap();
    let r = b
        .write(vec![
            Write::put("y", b"1".to_vec(), Precondition::DoesNotExist),
            Write::put("x", b"2".to_vec(), Precondition::DoesNotExist),
        ])
        .await;
    match r {
        Err(Error::Conflict { key, .. }) => assert_eq!(key, "x"),
        other => panic!("expected a conflict on x, got {other:?}"),
    }
    assert_eq!(b.get("y").await.unwrap(), None, "half a batch was applied");
}

async fn list_is_by_prefix_in_key_order(b: Arc<dyn Backend>) {
    for k in ["run/3", "run/1", "env/a", "run/2"] {
        b.write(vec![Write::put(
            k,
            k.as_bytes().to_vec(),
            Precondition::None,
        )])
        .await
        .unwrap();
    }
    let keys = |items: Vec<crate::Item>| items.into_iter().map(|i| i.key).collect::<Vec<_>>();
    assert_eq!(
        keys(b.list("run/", None, 10).await.unwrap()),
        ["run/1", "run/2", "run/3"]
    );
    assert_eq!(
        keys(b.list("run/", Some("run/1"), 1).await.unwrap()),
        ["run/2"]
    );
}

async fn delayed_messages_wait(b: Arc<dyn Backend>) {
    b.send(Outgoing::after(
        b"later".to_vec(),
        Duration::from_millis(400),
    ))
    .await
    .unwrap();
    b.send(Outgoing::now(b"now".to_vec())).await.unwrap();
    let first = b.receive(10, SHORT * 10, Duration::ZERO).await.unwrap();
    assert_eq!(first.len(), 1);
    assert_eq!(first[0].body, b"now");
    assert_eq!(b.depth().await.unwrap().delayed, 1);
    let started = std::time::Instant::now();
    let later = b
        .receive(10, SHORT * 10, Duration::from_secs(3))
        .await
        .unwrap();
    assert_eq!(later.len(), 1, "the delayed message never came");
    assert_eq!(later[0].body, b"later");
    assert!(started.elapsed() < Duration::from_secs(2));
}

async fn visibility_hides_and_returns(b: Arc<dyn Backend>) {
    b.send(Outgoing::now(b"m".to_vec())).await.unwrap();
    let got = b.receive(1, SHORT, Duration::ZERO).await.unwrap();
    assert_eq!(got[0].receive_count, 1);
    assert!(
        b.receive(1, SHORT, Duration::ZERO)
            .await
            .unwrap()
            .is_empty()
    );
    assert_eq!(b.depth().await.unwrap().in_flight, 1);
    let again = b.receive(1, SHORT, Duration::from_secs(2)).await.unwrap();
    assert_eq!(again.len(), 1, "an unacked message did not come back");
    assert_eq!(again[0].receive_count, 2);
    assert_eq!(again[0].id, got[0].id);
    b.ack(&again[0].receipt).await.unwrap();
    assert_eq!(b.depth().await.unwrap(), crate::Depth::default());
}

async fn dead_letter_after_max_receives_and_redrive(b: Arc<dyn Backend>) {
    b.send(Outgoing::now(b"poison".to_vec())).await.unwrap();
    for n in 1..=3 {
        let got = b.receive(1, SHORT, Duration::from_secs(1)).await.unwrap();
        assert_eq!(got.len(), 1);
        assert_eq!(got[0].receive_count, n);
        b.release(&got[0].receipt, Duration::ZERO, &format!("failure {n}"))
            .await
            .unwrap();
    }
    assert!(
        b.receive(1, SHORT, Duration::ZERO)
            .await
            .unwrap()
            .is_empty()
    );
    let dead = b.dead_letters(10).await.unwrap();
    assert_eq!(dead.len(), 1);
    assert_eq!(dead[0].body, b"poison");
    assert_eq!(dead[0].receive_count, 3);
    assert_eq!(dead[0].last_error.as_deref(), Some("failure 3"));
    assert!(b.redrive(&dead[0].id).await.unwrap());
    assert!(!b.redrive(&dead[0].id).await.unwrap());
    let back = b.receive(1, SHORT, Duration::ZERO).await.unwrap();
    assert_eq!(back.len(), 1);
    assert_eq!(back[0].receive_count, 1);
    assert!(b.dead_letters(10).await.unwrap().is_empty());
}

async fn checkpoint_is_atomic(b: Arc<dyn Backend>) {
    b.send(Outgoing::now(b"step".to_vec())).await.unwrap();
    let msg = b
        .receive(1, SHORT * 10, Duration::ZERO)
        .await
        .unwrap()
        .remove(0);
    b.write(vec![Write::put("run", b"v1".to_vec(), Precondition::None)])
        .await
        .unwrap();
    let failed = b
        .checkpoint(Checkpoint {
            writes: vec![Write::put(
                "run",
                b"v2".to_vec(),
                Precondition::MatchesVersion(7),
            )],
            send: vec![Outgoing::now(b"next".to_vec())],
            ack: Some(msg.receipt.clone()),
        })
        .await;
    assert!(matches!(failed, Err(Error::Conflict { .. })), "{failed:?}");
    assert_eq!(
        b.depth().await.unwrap().in_flight,
        1,
        "acked despite a conflict"
    );
    assert_eq!(
        b.depth().await.unwrap().visible,
        0,
        "sent despite a conflict"
    );
    let v = b
        .checkpoint(Checkpoint {
            writes: vec![Write::put(
                "run",
                b"v2".to_vec(),
                Precondition::MatchesVersion(1),
            )],
            send: vec![Outgoing::now(b"next".to_vec())],
            ack: Some(msg.receipt),
        })
        .await
        .unwrap();
    assert_eq!(v, vec![2]);
    let next = b.receive(10, SHORT, Duration::ZERO).await.unwrap();
    assert_eq!(next.len(), 1);
    assert_eq!(next[0].body, b"next");
}

async fn batched_checkpoints_are_independent(b: Arc<dyn Backend>) {
    let put = |key: &str, pre: Precondition, body: &[u8]| Checkpoint {
        writes: vec![Write::put(key, b"v".to_vec(), pre)],
        send: vec![Outgoing::now(body.to_vec())],
        ack: None,
    };
    b.write(vec![Write::put("taken", b"v".to_vec(), Precondition::None)])
        .await
        .unwrap();
    let results = b
        .checkpoint_batch(vec![
            put("a", Precondition::DoesNotExist, b"a"),
            put("taken", Precondition::DoesNotExist, b"taken"),
            put("b", Precondition::DoesNotExist, b"b"),
            put("a", Precondition::DoesNotExist, b"a again"),
        ])
        .await;
    assert!(
        matches!(results[0], Ok(ref v) if *v == vec![1]),
        "{results:?}"
    );
    assert!(
        matches!(results[1], Err(Error::Conflict { .. })),
        "{results:?}"
    );
    assert!(
        matches!(results[2], Ok(ref v) if *v == vec![1]),
        "{results:?}"
    );
    assert!(
        matches!(results[3], Err(Error::Conflict { .. })),
        "a later checkpoint sees an earlier one of the batch: {results:?}"
    );
    let got = b.receive(10, SHORT, Duration::ZERO).await.unwrap();
    let mut bodies: Vec<Vec<u8>> = got.into_iter().map(|m| m.body).collect();
    bodies.sort();
    assert_eq!(bodies, vec![b"a".to_vec(), b"b".to_vec()]);

    // A checkpoint refused after its first write or its ack leaves nothing.
    b.send(Outgoing::now(b"held".to_vec())).await.unwrap();
    let held = b.receive(1, SHORT * 10, Duration::ZERO).await.unwrap();
    let results = b
        .checkpoint_batch(vec![
            Checkpoint {
                writes: vec![
                    Write::put("first", b"v".to_vec(), Precondition::DoesNotExist),
                    Write::put("taken", b"w".to_vec(), Precondition::DoesNotExist),
                ],
                send: vec![Outgoing::now(b"lost".to_vec())],
                ack: None,
            },
            Checkpoint {
                writes: vec![Write::put("b", b"w".to_vec(), Precondition::DoesNotExist)],
                send: vec![],
                ack: Some(held[0].receipt.clone()),
            },
            put("c", Precondition::DoesNotExist, b"c"),
        ])
        .await;
    assert!(
        matches!(results[0], Err(Error::Conflict { .. })),
        "{results:?}"
    );
    assert!(
        matches!(results[1], Err(Error::Conflict { .. })),
        "{results:?}"
    );
    assert!(
        matches!(results[2], Ok(ref v) if *v == vec![1]),
        "{results:?}"
    );
    assert_eq!(
        b.get("first").await.unwrap(),
        None,
        "half a checkpoint applied"
    );
    let acked = b.ack(&held[0].receipt).await;
    assert!(
        acked.is_ok(),
        "a refused checkpoint acked its message: {acked:?}"
    );
    let got = b.receive(10, SHORT, Duration::ZERO).await.unwrap();
    let bodies: Vec<Vec<u8>> = got.into_iter().map(|m| m.body).collect();
    assert_eq!(bodies, vec![b"c".to_vec()]);
}

async fn stale_receipts_are_refused(b: Arc<dyn Backend>) {
    b.send(Outgoing::now(b"m".to_vec())).await.unwrap();
    let first = b.receive(1, SHORT, Duration::ZERO).await.unwrap().remove(0);
    let second = b
        .receive(1, SHORT * 10, Duration::from_secs(2))
        .await
        .unwrap()
        .remove(0);
    let stale = b.ack(&first.receipt).await;
    assert!(
        matches!(stale, Err(Error::StaleReceipt { .. })),
        "{stale:?}"
    );
    let stale = b
        .checkpoint(Checkpoint {
            writes: vec![Write::put("k", b"v".to_vec(), Precondition::None)],
            send: vec![],
            ack: Some(first.receipt),
        })
        .await;
    assert!(
        matches!(stale, Err(Error::StaleReceipt { .. })),
        "{stale:?}"
    );
    assert_eq!(b.get("k").await.unwrap(), None, "a stale checkpoint wrote");
    b.ack(&second.receipt).await.unwrap();
}
