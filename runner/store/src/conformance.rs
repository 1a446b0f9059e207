//! The behaviour every backend must show, one function per property; see
//! [`crate::conformance_tests!`]. Times are chosen from the backend's
//! [`Capabilities`], so a queue with whole-second delays is tested in
//! seconds and the embedded one in fractions of one.
#![allow(clippy::unwrap_used, missing_docs)]

use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::{
    Backend, Checkpoint, Error, Key, ListQuery, Outgoing, Precondition, Put, Received, Write,
    decode_counter, now_ms,
};

fn key(partition: &str, sort: &str) -> Key {
    Key::new(partition, sort)
}

fn put(k: Key, value: &[u8], precondition: Precondition) -> Write {
    Write::put(k, value.to_vec(), precondition)
}

/// The shortest span the backend can tell apart reliably.
fn tick(b: &Arc<dyn Backend>) -> Duration {
    b.capabilities()
        .delay_granularity
        .max(Duration::from_millis(250))
}

async fn version(b: &Arc<dyn Backend>, k: &Key) -> Option<u64> {
    b.get(k).await.unwrap().map(|i| i.version)
}

/// Receives one message, waiting up to `wait`.
async fn receive_one(
    b: &Arc<dyn Backend>,
    visibility: Duration,
    wait: Duration,
) -> Option<Received> {
    let deadline = Instant::now() + wait;
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        let mut got = b
            .receive(1, visibility, left.min(Duration::from_secs(1)))
            .await
            .unwrap();
        if let Some(m) = got.pop() {
            return Some(m);
        }
        if Instant::now() >= deadline {
            return None;
        }
    }
}

pub async fn versions_grow_and_preconditions_hold(b: Arc<dyn Backend>) {
    let a = key("p", "a");
    b.write(vec![put(a.clone(), b"1", Precondition::DoesNotExist)])
        .await
        .unwrap();
    assert_eq!(version(&b, &a).await, Some(1));
    let again = b
        .write(vec![put(a.clone(), b"x", Precondition::DoesNotExist)])
        .await;
    assert!(
        matches!(again, Err(Error::Conflict { ref key, .. }) if *key == a),
        "{again:?}"
    );
    b.write(vec![put(a.clone(), b"2", Precondition::MatchesVersion(1))])
        .await
        .unwrap();
    let stale = b
        .write(vec![put(a.clone(), b"3", Precondition::MatchesVersion(1))])
        .await;
    assert!(matches!(stale, Err(Error::Conflict { .. })), "{stale:?}");
    let item = b.get(&a).await.unwrap().unwrap();
    assert_eq!((item.value.as_slice(), item.version), (&b"2"[..], 2));
    b.write(vec![put(a.clone(), b"4", Precondition::None)])
        .await
        .unwrap();
    assert_eq!(version(&b, &a).await, Some(3));
    let missing = b
        .write(vec![put(
            key("p", "b"),
            b"1",
            Precondition::MatchesVersion(1),
        )])
        .await;
    assert!(
        matches!(missing, Err(Error::Conflict { .. })),
        "{missing:?}"
    );
    let wrong = b
        .write(vec![Write::delete(
            a.clone(),
            Precondition::MatchesVersion(2),
        )])
        .await;
    assert!(matches!(wrong, Err(Error::Conflict { .. })), "{wrong:?}");
    b.write(vec![Write::delete(
        a.clone(),
        Precondition::MatchesVersion(3),
    )])
    .await
    .unwrap();
    assert_eq!(b.get(&a).await.unwrap(), None);
    b.write(vec![Write::delete(a.clone(), Precondition::None)])
        .await
        .unwrap();
    b.write(vec![put(a.clone(), b"5", Precondition::DoesNotExist)])
        .await
        .unwrap();
    assert_eq!(
        version(&b, &a).await,
        Some(1),
        "a re-created item starts again at 1"
    );
}

pub async fn batches_are_all_or_nothing(b: Arc<dyn Backend>) {
    b.write(vec![put(key("p", "x"), b"1", Precondition::None)])
        .await
        .unwrap();
    let r = b
        .write(vec![
            put(key("p", "y"), b"1", Precondition::DoesNotExist),
            put(key("q", "z"), b"1", Precondition::None),
            put(key("p", "x"), b"2", Precondition::DoesNotExist),
        ])
        .await;
    match r {
        Err(Error::Conflict { key: k, .. }) => assert_eq!(k, key("p", "x")),
        other => panic!("expected a conflict on p#x, got {other:?}"),
    }
    assert_eq!(
        b.get(&key("p", "y")).await.unwrap(),
        None,
        "half a batch was applied"
    );
    assert_eq!(
        b.get(&key("q", "z")).await.unwrap(),
        None,
        "half a batch was applied"
    );
    assert_eq!(b.get(&key("p", "x")).await.unwrap().unwrap().value, b"1");
}

pub async fn a_batch_may_not_write_one_key_twice(b: Arc<dyn Backend>) {
    let r = b
        .write(vec![
            put(key("p", "k"), b"1", Precondition::None),
            put(key("p", "other"), b"1", Precondition::None),
            Write::delete(key("p", "k"), Precondition::None),
        ])
        .await;
    assert!(matches!(r, Err(Error::Invalid(_))), "{r:?}");
    assert_eq!(b.get(&key("p", "other")).await.unwrap(), None);
    let empty = b
        .write(vec![put(key("p", ""), b"1", Precondition::None)])
        .await;
    assert!(matches!(empty, Err(Error::Invalid(_))), "{empty:?}");
}

pub async fn checks_write_nothing_but_guard_the_batch(b: Arc<dyn Backend>) {
    let a = key("p", "a");
    b.write(vec![put(a.clone(), b"1", Precondition::None)])
        .await
        .unwrap();
    b.write(vec![
        Write::Check {
            key: a.clone(),
            version: 1,
        },
        put(key("p", "b"), b"1", Precondition::None),
    ])
    .await
    .unwrap();
    assert_eq!(version(&b, &a).await, Some(1), "a check wrote the item");
    assert!(b.get(&key("p", "b")).await.unwrap().is_some());
    let moved = b
        .write(vec![
            Write::Check {
                key: a.clone(),
                version: 2,
            },
            put(key("p", "c"), b"1", Precondition::None),
        ])
        .await;
    assert!(
        matches!(moved, Err(Error::Conflict { ref key, .. }) if *key == a),
        "{moved:?}"
    );
    assert_eq!(b.get(&key("p", "c")).await.unwrap(), None);
    let missing = b
        .write(vec![Write::Check {
            key: key("p", "none"),
            version: 1,
        }])
        .await;
    assert!(
        matches!(missing, Err(Error::Conflict { .. })),
        "{missing:?}"
    );
}

pub async fn counters_add_whatever_the_version(b: Arc<dyn Backend>) {
    let c = key("counter", "runs");
    let add = |delta| Write::Increment {
        key: c.clone(),
        delta,
    };
    b.write(vec![add(3)]).await.unwrap();
    b.write(vec![add(-1), put(key("p", "x"), b"1", Precondition::None)])
        .await
        .unwrap();
    let value = |b: Arc<dyn Backend>, c: Key| async move {
        decode_counter(
            &b.get(&c)
                .await
                .unwrap()
                .map(|i| i.value)
                .unwrap_or_default(),
        )
    };
    assert_eq!(value(b.clone(), c.clone()).await, 2);
    let refused = b
        .write(vec![
            add(10),
            put(key("p", "x"), b"2", Precondition::DoesNotExist),
        ])
        .await;
    assert!(
        matches!(refused, Err(Error::Conflict { .. })),
        "{refused:?}"
    );
    assert_eq!(
        value(b.clone(), c.clone()).await,
        2,
        "a refused batch counted"
    );
}

pub async fn lists_read_one_partition_in_sort_order_by_pages(b: Arc<dyn Backend>) {
    for (p, s) in [
        ("run", "3"),
        ("run", "1"),
        ("env", "a"),
        ("run", "2"),
        ("runs", "0"),
        ("run", "10"),
    ] {
        b.write(vec![put(key(p, s), s.as_bytes(), Precondition::None)])
            .await
            .unwrap();
    }
    let sorts = |items: Vec<crate::Item>| items.into_iter().map(|i| i.key.sort).collect::<Vec<_>>();
    let all = b.list(&ListQuery::partition("run", 10)).await.unwrap();
    assert_eq!(sorts(all.items), ["1", "10", "2", "3"]);
    let first = b.list(&ListQuery::partition("run", 2)).await.unwrap();
    assert_eq!(sorts(first.items), ["1", "10"]);
    let next = first
        .next
        .expect("a first page of a longer list names where the next starts");
    let second = b
        .list(&ListQuery::partition("run", 2).after(Some(next)))
        .await
        .unwrap();
    assert_eq!(sorts(second.items), ["2", "3"]);
    if let Some(after) = second.next {
        let rest = b
            .list(&ListQuery::partition("run", 2).after(Some(after)))
            .await
            .unwrap();
        assert!(rest.items.is_empty() && rest.next.is_none(), "{rest:?}");
    }
    let prefixed = b
        .list(&ListQuery::partition("run", 10).prefix("1"))
        .await
        .unwrap();
    assert_eq!(sorts(prefixed.items), ["1", "10"]);
    let down = b
        .list(&ListQuery::partition("run", 3).descending())
        .await
        .unwrap();
    assert_eq!(sorts(down.items), ["3", "2", "10"]);
    let rest = b
        .list(&ListQuery::partition("run", 3).descending().after(down.next))
        .await
        .unwrap();
    assert_eq!(sorts(rest.items), ["1"]);
    let none = b.list(&ListQuery::partition("nothing", 10)).await.unwrap();
    assert!(none.items.is_empty() && none.next.is_none());
}

pub async fn reads_see_every_acknowledged_write(b: Arc<dyn Backend>) {
    let k = key("rw", "item");
    for n in 1..=20u64 {
        let pre = if n == 1 {
            Precondition::DoesNotExist
        } else {
            Precondition::MatchesVersion(n - 1)
        };
        b.write(vec![
            put(k.clone(), n.to_string().as_bytes(), pre),
            put(
                key("rw", &format!("log-{n:03}")),
                b"x",
                Precondition::DoesNotExist,
            ),
        ])
        .await
        .unwrap();
        let item = b.get(&k).await.unwrap().unwrap();
        assert_eq!((item.version, item.value), (n, n.to_string().into_bytes()));
        let listed = b
            .list(&ListQuery::partition("rw", 100).prefix("log-"))
            .await
            .unwrap();
        assert_eq!(
            listed.items.len() as u64,
            n,
            "a list missed an acknowledged write"
        );
    }
}

pub async fn many_keys_read_as_one_at_a_time(b: Arc<dyn Backend>) {
    assert_eq!(b.get_many(&[]).await.unwrap(), vec![]);
    let written: Vec<Key> = (0..150)
        .map(|n| key(if n % 2 == 0 { "many-a" } else { "many-b" }, &n.to_string()))
        .collect();
    for chunk in written.chunks(25) {
        let writes = chunk
            .iter()
            .map(|k| put(k.clone(), k.sort.as_bytes(), Precondition::None))
            .collect();
        b.write(writes).await.unwrap();
    }
    b.write(vec![put(written[3].clone(), b"again", Precondition::None)])
        .await
        .unwrap();
    b.write(vec![Write::Put(Put {
        key: key("many-a", "expired"),
        value: b"v".to_vec(),
        precondition: Precondition::None,
        expires_at_ms: Some(now_ms() - 1),
        due_at_ms: None,
    })])
    .await
    .unwrap();
    // Reversed, with keys that are missing, expired and asked twice.
    let mut asked: Vec<Key> = written.iter().rev().cloned().collect();
    asked.insert(7, key("many-a", "missing"));
    asked.insert(60, key("many-a", "expired"));
    asked.push(written[3].clone());
    let many = b.get_many(&asked).await.unwrap();
    assert_eq!(many.len(), asked.len());
    for (k, item) in asked.iter().zip(&many) {
        assert_eq!(item, &b.get(k).await.unwrap(), "{k:?}");
    }
    assert_eq!(many[7], None);
    assert_eq!(many[60], None);
    let last = many.last().cloned().flatten().unwrap();
    assert_eq!((last.value, last.version), (b"again".to_vec(), 2));
}

pub async fn items_over_the_size_limit_are_refused(b: Arc<dyn Backend>) {
    let caps = b.capabilities();
    let big = vec![b'x'; caps.max_item_bytes + 1];
    let r = b
        .write(vec![Write::put(key("big", "one"), big, Precondition::None)])
        .await;
    assert!(matches!(r, Err(Error::TooLarge { .. })), "{r:?}");
    assert!(!r.unwrap_err().is_retryable());
    let many: Vec<Write> = (0..=caps.max_batch_items)
        .map(|i| put(key("many", &format!("{i:04}")), b"x", Precondition::None))
        .collect();
    let r = b.write(many).await;
    assert!(matches!(r, Err(Error::TooLarge { .. })), "{r:?}");
    let piece = caps.max_item_bytes - 1024;
    let count = caps.max_batch_bytes / piece + 1;
    if count <= caps.max_batch_items {
        let heavy: Vec<Write> = (0..count)
            .map(|i| {
                Write::put(
                    key("heavy", &format!("{i:04}")),
                    vec![b'y'; piece],
                    Precondition::None,
                )
            })
            .collect();
        let r = b.write(heavy).await;
        assert!(matches!(r, Err(Error::TooLarge { .. })), "{r:?}");
    }
    assert!(
        b.list(&ListQuery::partition("many", 10))
            .await
            .unwrap()
            .items
            .is_empty()
    );
    assert!(
        b.list(&ListQuery::partition("heavy", 10))
            .await
            .unwrap()
            .items
            .is_empty()
    );
    let fits = vec![b'x'; caps.max_item_bytes - 1024];
    b.write(vec![Write::put(
        key("big", "fits"),
        fits,
        Precondition::None,
    )])
    .await
    .unwrap();
}

pub async fn expired_items_are_gone_for_reads(b: Arc<dyn Backend>) {
    let now = now_ms();
    let expiring = |sort: &str, at: u64| {
        Write::Put(Put {
            key: key("ttl", sort),
            value: b"v".to_vec(),
            precondition: Precondition::None,
            expires_at_ms: Some(at),
            due_at_ms: None,
        })
    };
    b.write(vec![
        expiring("gone", now - 1),
        expiring("soon", now + 2_000),
        expiring("later", now + 3_600_000),
    ])
    .await
    .unwrap();
    assert_eq!(b.get(&key("ttl", "gone")).await.unwrap(), None);
    assert!(b.get(&key("ttl", "soon")).await.unwrap().is_some());
    let listed = b.list(&ListQuery::partition("ttl", 10)).await.unwrap();
    let sorts: Vec<_> = listed.items.iter().map(|i| i.key.sort.as_str()).collect();
    assert_eq!(sorts, ["later", "soon"]);
    b.write(vec![put(
        key("ttl", "gone"),
        b"new",
        Precondition::DoesNotExist,
    )])
    .await
    .expect("an expired item does not exist for a precondition");
    tokio::time::sleep(Duration::from_millis(2_200)).await;
    assert_eq!(b.get(&key("ttl", "soon")).await.unwrap(), None);
    let listed = b.list(&ListQuery::partition("ttl", 10)).await.unwrap();
    let sorts: Vec<_> = listed.items.iter().map(|i| i.key.sort.as_str()).collect();
    assert_eq!(sorts, ["gone", "later"]);
}

pub async fn due_lists_items_whose_time_came(b: Arc<dyn Backend>) {
    let now = now_ms();
    let due = |sort: &str, at: Option<u64>| {
        Write::Put(Put {
            key: key("due", sort),
            value: b"v".to_vec(),
            precondition: Precondition::None,
            expires_at_ms: None,
            due_at_ms: at,
        })
    };
    b.write(vec![
        due("a", Some(now - 10)),
        due("b", Some(now + 60_000)),
        due("c", None),
        due("d", Some(now - 20)),
    ])
    .await
    .unwrap();
    let wait_for = |want: Vec<&'static str>, before: u64| {
        let b = b.clone();
        async move {
            let deadline = Instant::now() + Duration::from_secs(10);
            loop {
                let got: Vec<String> = b
                    .due(before, 10)
                    .await
                    .unwrap()
                    .into_iter()
                    .map(|k| k.sort)
                    .collect();
                if got == want {
                    return;
                }
                assert!(
                    Instant::now() < deadline,
                    "due({before}) gave {got:?}, want {want:?}"
                );
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
    };
    wait_for(vec!["d", "a"], now).await;
    wait_for(vec!["d", "a", "b"], now + 61_000).await;
    b.write(vec![
        due("a", None),
        Write::delete(key("due", "d"), Precondition::None),
    ])
    .await
    .unwrap();
    wait_for(vec![], now).await;
}

pub async fn delayed_messages_wait(b: Arc<dyn Backend>) {
    let delay = tick(&b) * 2;
    let sent = Instant::now();
    b.send(Outgoing::at(
        b"later".to_vec(),
        now_ms() + delay.as_millis() as u64,
    ))
    .await
    .unwrap();
    b.send(Outgoing::now(b"now".to_vec())).await.unwrap();
    let first = receive_one(&b, Duration::from_secs(30), Duration::from_secs(5))
        .await
        .expect("the message sent now");
    assert_eq!(first.body, b"now");
    let later = receive_one(
        &b,
        Duration::from_secs(30),
        delay * 4 + Duration::from_secs(2),
    )
    .await
    .expect("the delayed message never came");
    assert_eq!(later.body, b"later");
    assert!(
        sent.elapsed() >= delay - Duration::from_millis(20),
        "delivered after {:?}",
        sent.elapsed()
    );
}

pub async fn far_timers_are_accepted_and_held(b: Arc<dyn Backend>) {
    // A timer far beyond any queue's maximum is accepted and held back.
    b.send(Outgoing::at(b"in a day".to_vec(), now_ms() + 86_400_000))
        .await
        .unwrap();
    assert!(
        receive_one(&b, Duration::from_secs(30), tick(&b) * 2)
            .await
            .is_none()
    );
}

pub async fn visibility_hides_and_returns(b: Arc<dyn Backend>) {
    let visibility = tick(&b) * 2;
    b.send(Outgoing::now(b"m".to_vec())).await.unwrap();
    let got = receive_one(&b, visibility, Duration::from_secs(5))
        .await
        .unwrap();
    assert_eq!(got.receive_count, 1);
    assert!(
        b.receive(1, visibility, Duration::ZERO)
            .await
            .unwrap()
            .is_empty()
    );
    let again = receive_one(&b, visibility, visibility * 4 + Duration::from_secs(2))
        .await
        .expect("an unacked message did not come back");
    assert_eq!(again.receive_count, 2);
    assert_eq!(again.id, got.id);
    b.ack(&again.receipt).await.unwrap();
    assert!(
        receive_one(&b, visibility, visibility * 2).await.is_none(),
        "an acked message came back"
    );
}

pub async fn extend_keeps_a_message_hidden(b: Arc<dyn Backend>) {
    let visibility = tick(&b) * 2;
    b.send(Outgoing::now(b"slow".to_vec())).await.unwrap();
    let got = receive_one(&b, visibility, Duration::from_secs(5))
        .await
        .unwrap();
    for _ in 0..3 {
        tokio::time::sleep(visibility / 2).await;
        b.extend(&got.receipt, visibility).await.unwrap();
    }
    assert!(
        b.receive(1, visibility, Duration::ZERO)
            .await
            .unwrap()
            .is_empty(),
        "an extended message came back"
    );
    let back = receive_one(&b, visibility, visibility * 4 + Duration::from_secs(2)).await;
    assert!(
        back.is_some(),
        "a message no longer extended never came back"
    );
}

pub async fn release_returns_a_message_after_its_delay(b: Arc<dyn Backend>) {
    let delay = tick(&b) * 2;
    b.send(Outgoing::now(b"r".to_vec())).await.unwrap();
    let got = receive_one(&b, Duration::from_secs(30), Duration::from_secs(5))
        .await
        .unwrap();
    let released = Instant::now();
    b.release(&got.receipt, delay).await.unwrap();
    let back = receive_one(
        &b,
        Duration::from_secs(30),
        delay * 4 + Duration::from_secs(2),
    )
    .await
    .expect("a released message never came back");
    assert_eq!(back.id, got.id);
    assert!(released.elapsed() >= delay - Duration::from_millis(20));
}

pub async fn acks_are_best_effort(b: Arc<dyn Backend>) {
    let visibility = tick(&b) * 2;
    b.send(Outgoing::now(b"m".to_vec())).await.unwrap();
    let first = receive_one(&b, visibility, Duration::from_secs(5))
        .await
        .unwrap();
    let second = receive_one(
        &b,
        Duration::from_secs(30),
        visibility * 4 + Duration::from_secs(2),
    )
    .await
    .unwrap();
    b.ack(&first.receipt)
        .await
        .expect("a stale ack is not an error");
    b.release(&first.receipt, Duration::ZERO)
        .await
        .expect("a stale release is not an error");
    b.extend(&first.receipt, visibility)
        .await
        .expect("a stale extend is not an error");
    b.ack(&second.receipt).await.unwrap();
    assert!(receive_one(&b, visibility, visibility * 2).await.is_none());
}

pub async fn messages_received_too_often_are_dead_lettered_and_redriven(b: Arc<dyn Backend>) {
    let max = b
        .capabilities()
        .max_receives
        .expect("the suite runs on a queue that gives up (max_receives)");
    b.send(Outgoing::now(b"doomed".to_vec())).await.unwrap();
    let mut id = None;
    for n in 1..=max {
        let got = receive_one(&b, Duration::from_secs(30), Duration::from_secs(5))
            .await
            .unwrap_or_else(|| panic!("receive {n} of {max} found nothing"));
        assert_eq!(got.body, b"doomed");
        assert_eq!(got.receive_count, n);
        id.get_or_insert(got.id.clone());
        b.release(&got.receipt, Duration::ZERO).await.unwrap();
    }
    assert!(
        receive_one(&b, Duration::from_secs(30), tick(&b) * 2)
            .await
            .is_none(),
        "a message received max_receives times came again"
    );
    let id = id.unwrap();
    for look in ["first", "second"] {
        let dead = b.dead_lettered(10).await.unwrap();
        assert_eq!(dead.len(), 1, "{look} look: {dead:?}");
        assert_eq!(
            (dead[0].id.as_str(), &dead[0].body[..]),
            (id.as_str(), &b"doomed"[..])
        );
        assert!(dead[0].receive_count >= max);
    }
    assert_eq!(b.redrive(Some("no-such-message")).await.unwrap(), 0);
    assert_eq!(b.dead_lettered(10).await.unwrap().len(), 1);
    assert_eq!(b.redrive(None).await.unwrap(), 1);
    assert!(b.dead_lettered(10).await.unwrap().is_empty());
    let back = receive_one(&b, Duration::from_secs(30), Duration::from_secs(5))
        .await
        .expect("a re-driven message never came");
    assert_eq!((&back.body[..], back.receive_count), (&b"doomed"[..], 1));
    b.ack(&back.receipt).await.unwrap();
    assert_eq!(b.redrive(None).await.unwrap(), 0);
}

pub async fn checkpoints_apply_writes_sends_and_ack(b: Arc<dyn Backend>) {
    b.send(Outgoing::now(b"step".to_vec())).await.unwrap();
    let msg = receive_one(&b, Duration::from_secs(30), Duration::from_secs(5))
        .await
        .unwrap();
    b.checkpoint(Checkpoint {
        writes: vec![
            put(key("run", "r"), b"v1", Precondition::DoesNotExist),
            Write::Increment {
                key: key("counter", "c"),
                delta: 1,
            },
        ],
        send: vec![Outgoing::now(b"next".to_vec())],
        ack: Some(msg.receipt),
        sync: true,
    })
    .await
    .unwrap();
    assert_eq!(b.get(&key("run", "r")).await.unwrap().unwrap().value, b"v1");
    let next = receive_one(&b, Duration::from_secs(30), Duration::from_secs(5))
        .await
        .expect("the follow-up");
    assert_eq!(next.body, b"next");
    b.ack(&next.receipt).await.unwrap();
    assert!(
        receive_one(&b, Duration::from_secs(1), tick(&b) * 2)
            .await
            .is_none(),
        "the handled message was not acked"
    );
}

pub async fn a_refused_checkpoint_sends_and_acks_nothing(b: Arc<dyn Backend>) {
    let visibility = tick(&b) * 2;
    b.send(Outgoing::now(b"step".to_vec())).await.unwrap();
    let msg = receive_one(&b, visibility, Duration::from_secs(5))
        .await
        .unwrap();
    b.write(vec![put(key("run", "r"), b"v1", Precondition::None)])
        .await
        .unwrap();
    let refused = b
        .checkpoint(Checkpoint {
            writes: vec![put(key("run", "r"), b"v2", Precondition::MatchesVersion(7))],
            send: vec![Outgoing::now(b"next".to_vec())],
            ack: Some(msg.receipt.clone()),
            sync: false,
        })
        .await;
    assert!(
        matches!(refused, Err(Error::Conflict { .. })),
        "{refused:?}"
    );
    let too_large = b
        .checkpoint(Checkpoint {
            writes: vec![Write::put(
                key("run", "r"),
                vec![0; b.capabilities().max_item_bytes + 1],
                Precondition::None,
            )],
            send: vec![Outgoing::now(b"next".to_vec())],
            ack: Some(msg.receipt.clone()),
            sync: false,
        })
        .await;
    assert!(
        matches!(too_large, Err(Error::TooLarge { .. })),
        "{too_large:?}"
    );
    assert_eq!(b.get(&key("run", "r")).await.unwrap().unwrap().value, b"v1");
    let back = receive_one(&b, visibility, visibility * 4 + Duration::from_secs(2))
        .await
        .expect("a refused checkpoint acked its message");
    assert_eq!(
        back.body, b"step",
        "a refused checkpoint sent its follow-up"
    );
    b.ack(&back.receipt).await.unwrap();
    assert!(receive_one(&b, visibility, visibility).await.is_none());
}

pub async fn batched_checkpoints_are_independent(b: Arc<dyn Backend>) {
    let one = |sort: &str, pre: Precondition, body: &[u8]| Checkpoint {
        writes: vec![put(key("intake", sort), b"v", pre)],
        send: vec![Outgoing::now(body.to_vec())],
        ack: None,
        sync: true,
    };
    b.write(vec![put(key("intake", "taken"), b"v", Precondition::None)])
        .await
        .unwrap();
    let results = b
        .checkpoint_batch(vec![
            one("a", Precondition::DoesNotExist, b"a"),
            one("taken", Precondition::DoesNotExist, b"taken"),
            one("b", Precondition::DoesNotExist, b"b"),
            one("a", Precondition::DoesNotExist, b"a again"),
        ])
        .await;
    assert!(results[0].is_ok(), "{results:?}");
    assert!(
        matches!(results[1], Err(Error::Conflict { .. })),
        "{results:?}"
    );
    assert!(results[2].is_ok(), "{results:?}");
    assert!(
        matches!(results[3], Err(Error::Conflict { .. })),
        "a later checkpoint sees an earlier one of the batch: {results:?}"
    );
    let mut bodies = Vec::new();
    while let Some(m) = receive_one(&b, Duration::from_secs(30), tick(&b) * 2).await {
        bodies.push(m.body);
    }
    bodies.sort();
    assert_eq!(bodies, vec![b"a".to_vec(), b"b".to_vec()]);

    // A checkpoint refused after its first write leaves nothing of itself.
    let results = b
        .checkpoint_batch(vec![
            Checkpoint {
                writes: vec![
                    put(key("intake", "first"), b"v", Precondition::DoesNotExist),
                    put(key("intake", "taken"), b"w", Precondition::DoesNotExist),
                ],
                send: vec![Outgoing::now(b"lost".to_vec())],
                ack: None,
                sync: true,
            },
            one("c", Precondition::DoesNotExist, b"c"),
        ])
        .await;
    assert!(
        matches!(results[0], Err(Error::Conflict { .. })),
        "{results:?}"
    );
    assert!(results[1].is_ok(), "{results:?}");
    assert_eq!(
        b.get(&key("intake", "first")).await.unwrap(),
        None,
        "half a checkpoint applied"
    );
    let got = receive_one(&b, Duration::from_secs(30), Duration::from_secs(5))
        .await
        .unwrap();
    assert_eq!(got.body, b"c");
}

pub async fn depth_is_exact_where_promised(b: Arc<dyn Backend>) {
    if !b.capabilities().exact_depth {
        return;
    }
    b.send(Outgoing::now(b"visible".to_vec())).await.unwrap();
    b.send(Outgoing::now(b"taken".to_vec())).await.unwrap();
    b.send(Outgoing::at(b"timer".to_vec(), now_ms() + 60_000))
        .await
        .unwrap();
    let taken = b
        .receive(1, Duration::from_secs(30), Duration::ZERO)
        .await
        .unwrap();
    assert_eq!(taken.len(), 1);
    let depth = b.depth().await.unwrap();
    assert_eq!(
        (depth.visible, depth.delayed, depth.in_flight),
        (1, 1, 1),
        "{depth:?}"
    );
}
