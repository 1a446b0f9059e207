//! A backend that keeps the promises of the store contract and no more, and
//! breaks them where the contract allows, on a seeded schedule: state in a
//! real store (SQLite, or DynamoDB on moto: writes stay atomic, as
//! DynamoDB's transactions are), a queue of its own in memory, on the
//! simulation's clock (SQS's delays run on real time, which a simulation
//! of hours in seconds cannot wait for). A checkpoint's writes,
//! sends and ack apply one by one, and between any two of them the
//! "process" may crash; sends and acks may be lost, messages duplicated,
//! delayed, reordered, and timers delivered early. After a crash every
//! operation fails until the simulation restarts the engine.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;
use gantry_store::{
    Backend, Capabilities, Checkpoint, Clock, DeadLettered, Depth, Error, Item, Key, ListQuery,
    Outgoing, Page, Queue, Receipt, Received, Store, Write,
};

/// A clock the simulation moves.
#[derive(Debug, Default)]
pub struct SimClock(AtomicU64);

impl SimClock {
    pub fn new(start: u64) -> Arc<Self> {
        Arc::new(SimClock(AtomicU64::new(start)))
    }

    pub fn advance_to(&self, ms: u64) {
        self.0.fetch_max(ms, Ordering::SeqCst);
    }
}

impl Clock for SimClock {
    fn now_ms(&self) -> u64 {
        self.0.load(Ordering::SeqCst)
    }
}

/// A small deterministic random source (splitmix64).
#[derive(Debug, Clone)]
pub struct Rng(u64);

impl Rng {
    pub fn new(seed: u64) -> Self {
        Rng(seed ^ 0x9E37_79B9_7F4A_7C15)
    }

    pub fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// True with probability `per_mille` / 1000.
    pub fn chance(&mut self, per_mille: u64) -> bool {
        self.next() % 1000 < per_mille
    }

    pub fn below(&mut self, n: u64) -> u64 {
        self.next() % n.max(1)
    }
}

/// How often each fault happens, per mille of the chances it has.
#[derive(Debug, Clone, Copy)]
pub struct FaultRates {
    pub crash: u64,
    pub drop_send: u64,
    pub drop_ack: u64,
    pub duplicate: u64,
    pub delay: u64,
    pub early: u64,
}

impl FaultRates {
    pub const NONE: FaultRates = FaultRates {
        crash: 0,
        drop_send: 0,
        drop_ack: 0,
        duplicate: 0,
        delay: 0,
        early: 0,
    };
}

#[derive(Debug, Clone)]
struct Message {
    id: u64,
    body: Vec<u8>,
    visible_at: u64,
    receive_count: u32,
    receipt: u64,
    in_flight: bool,
}

struct State {
    rng: Rng,
    rates: FaultRates,
    crashed: bool,
    messages: Vec<Message>,
    next_id: u64,
    next_receipt: u64,
    /// What happened, for a replay to compare.
    trace: Vec<String>,
    crashes: u32,
}

impl State {
    /// Rolls for the fault `per_mille` picks.
    fn roll(&mut self, per_mille: fn(&FaultRates) -> u64) -> bool {
        let rate = per_mille(&self.rates);
        self.rng.chance(rate)
    }
}

/// The faulty backend.
pub struct FaultyBackend {
    store: Arc<dyn Backend>,
    clock: Arc<SimClock>,
    state: Mutex<State>,
    caps: Capabilities,
}

fn down() -> Error {
    Error::Unavailable {
        message: "the process crashed".into(),
        maybe_applied: true,
    }
}

impl FaultyBackend {
    /// The faults of `rates` around `store`, whose clock is `clock`.
    pub fn new(
        store: Arc<dyn Backend>,
        clock: Arc<SimClock>,
        seed: u64,
        rates: FaultRates,
        single_process: bool,
    ) -> Self {
        let caps = Capabilities {
            atomic_checkpoint: false,
            single_process,
            exact_depth: true,
            max_delay: Some(Duration::from_secs(900)),
            delay_granularity: Duration::from_secs(1),
            max_receives: None,
            ..store.capabilities()
        };
        FaultyBackend {
            store,
            clock,
            caps,
            state: Mutex::new(State {
                rng: Rng::new(seed),
                rates,
                crashed: false,
                messages: vec![],
                next_id: 1,
                next_receipt: 1,
                trace: vec![],
                crashes: 0,
            }),
        }
    }

    fn state(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().expect("state")
    }

    /// Whether the "process" crashed.
    pub fn crashed(&self) -> bool {
        self.state().crashed
    }

    /// Crashes the process now (a fault injected from outside the backend,
    /// e.g. right after an effect).
    pub fn crash(&self) {
        let mut s = self.state();
        s.crashed = true;
        s.crashes += 1;
        s.trace.push("crash (outside)".into());
    }

    /// No more faults: the world is over and being inspected.
    pub fn calm(&self) {
        self.state().rates = FaultRates::NONE;
    }

    /// A new process takes over: operations work again; messages that were
    /// in flight come back when their visibility runs out.
    pub fn restart(&self) {
        let mut s = self.state();
        s.crashed = false;
        s.trace.push("restart".into());
    }

    /// Rolls for a fault at the given rate (0 when faults are off).
    pub fn roll(&self, per_mille: fn(&FaultRates) -> u64) -> bool {
        self.state().roll(per_mille)
    }

    /// Crashes here with the crash rate.
    fn maybe_crash(&self, where_: &str) -> bool {
        let mut s = self.state();
        let rate = s.rates.crash;
        if s.rng.chance(rate) {
            s.crashed = true;
            s.crashes += 1;
            s.trace.push(format!("crash {where_}"));
            true
        } else {
            false
        }
    }

    pub fn crashes(&self) -> u32 {
        self.state().crashes
    }

    pub fn trace(&self) -> Vec<String> {
        self.state().trace.clone()
    }

    pub fn note(&self, line: String) {
        self.state().trace.push(line);
    }

    /// When the next hidden message becomes visible, if any.
    pub fn next_visible_at(&self) -> Option<u64> {
        let now = self.clock.now_ms();
        self.state()
            .messages
            .iter()
            .map(|m| m.visible_at)
            .filter(|t| *t > now)
            .min()
    }

    /// Every message left, for a diagnosis.
    pub fn pending(&self) -> Vec<String> {
        self.state()
            .messages
            .iter()
            .map(|m| {
                format!(
                    "{} at {} (received {}×{}): {}",
                    m.id,
                    m.visible_at,
                    m.receive_count,
                    if m.in_flight { ", in flight" } else { "" },
                    String::from_utf8_lossy(&m.body)
                )
            })
            .collect()
    }

    /// Enqueues `message`: maybe lost, delayed or duplicated.
    fn enqueue(&self, message: Outgoing) {
        let now = self.clock.now_ms();
        let mut s = self.state();
        if s.roll(|r| r.drop_send) {
            s.trace.push(format!(
                "drop send {}",
                String::from_utf8_lossy(&message.body)
            ));
            return;
        }
        // Delays are whole seconds, at most 15 minutes.
        let wanted = message.not_before_ms.saturating_sub(now);
        let mut delay = wanted.div_ceil(1000) * 1000;
        delay = delay.min(900_000);
        if s.roll(|r| r.delay) {
            delay += s.rng.below(60) * 1000;
        }
        let copies = if s.roll(|r| r.duplicate) { 2 } else { 1 };
        for _ in 0..copies {
            let id = s.next_id;
            s.next_id += 1;
            s.messages.push(Message {
                id,
                body: message.body.clone(),
                visible_at: now + delay,
                receive_count: 0,
                receipt: 0,
                in_flight: false,
            });
        }
    }

    fn ack_now(&self, receipt: &Receipt) {
        let mut s = self.state();
        if s.roll(|r| r.drop_ack) {
            s.trace.push(format!("drop ack {}", receipt.0));
            return;
        }
        if let Some((id, nonce)) = parse(receipt) {
            s.messages
                .retain(|m| !(m.id == id && m.receipt == nonce && m.in_flight));
        }
    }
}

fn parse(receipt: &Receipt) -> Option<(u64, u64)> {
    let (id, nonce) = receipt.0.split_once(':')?;
    Some((id.parse().ok()?, nonce.parse().ok()?))
}

#[async_trait]
impl Store for FaultyBackend {
    async fn get(&self, key: &Key) -> Result<Option<Item>, Error> {
        if self.crashed() {
            return Err(down());
        }
        self.store.get(key).await
    }

    async fn list(&self, query: &ListQuery) -> Result<Page, Error> {
        if self.crashed() {
            return Err(down());
        }
        self.store.list(query).await
    }

    async fn write(&self, writes: Vec<Write>) -> Result<(), Error> {
        if self.crashed() {
            return Err(down());
        }
        self.store.write(writes).await?;
        if self.maybe_crash("after a write") {
            return Err(down());
        }
        Ok(())
    }

    async fn due(&self, before_ms: u64, limit: usize) -> Result<Vec<Key>, Error> {
        if self.crashed() {
            return Err(down());
        }
        self.store.due(before_ms, limit).await
    }
}

#[async_trait]
impl Queue for FaultyBackend {
    async fn send(&self, message: Outgoing) -> Result<(), Error> {
        if self.crashed() || self.maybe_crash("before a send") {
            return Err(down());
        }
        self.enqueue(message);
        Ok(())
    }

    async fn receive(
        &self,
        max: usize,
        visibility: Duration,
        _wait: Duration,
    ) -> Result<Vec<Received>, Error> {
        if self.crashed() {
            return Err(down());
        }
        let now = self.clock.now_ms();
        let mut s = self.state();
        let mut visible: Vec<usize> = s
            .messages
            .iter()
            .enumerate()
            .filter(|(_, m)| m.visible_at <= now)
            .map(|(i, _)| i)
            .collect();
        // A timer delivered early: any hidden message, now.
        if s.roll(|r| r.early) {
            let hidden: Vec<usize> = s
                .messages
                .iter()
                .enumerate()
                .filter(|(_, m)| m.visible_at > now && !m.in_flight)
                .map(|(i, _)| i)
                .collect();
            if !hidden.is_empty() {
                let pick = hidden[s.rng.below(hidden.len() as u64) as usize];
                visible.push(pick);
            }
        }
        let mut got = Vec::new();
        while !visible.is_empty() && got.len() < max {
            let at = s.rng.below(visible.len() as u64) as usize;
            let i = visible.swap_remove(at);
            let receipt = s.next_receipt;
            s.next_receipt += 1;
            let m = &mut s.messages[i];
            m.in_flight = true;
            m.receive_count += 1;
            m.receipt = receipt;
            m.visible_at = now + visibility.as_millis() as u64;
            got.push(Received {
                id: m.id.to_string(),
                receipt: Receipt(format!("{}:{receipt}", m.id)),
                body: m.body.clone(),
                receive_count: m.receive_count,
            });
        }
        Ok(got)
    }

    async fn extend(&self, receipt: &Receipt, visibility: Duration) -> Result<(), Error> {
        if self.crashed() {
            return Err(down());
        }
        let now = self.clock.now_ms();
        if let Some((id, nonce)) = parse(receipt) {
            for m in self.state().messages.iter_mut() {
                if m.id == id && m.receipt == nonce && m.in_flight {
                    m.visible_at = now + visibility.as_millis() as u64;
                }
            }
        }
        Ok(())
    }

    async fn ack(&self, receipt: &Receipt) -> Result<(), Error> {
        if self.crashed() {
            return Err(down());
        }
        self.ack_now(receipt);
        Ok(())
    }

    async fn release(&self, receipt: &Receipt, delay: Duration) -> Result<(), Error> {
        if self.crashed() {
            return Err(down());
        }
        let now = self.clock.now_ms();
        if let Some((id, nonce)) = parse(receipt) {
            for m in self.state().messages.iter_mut() {
                if m.id == id && m.receipt == nonce && m.in_flight {
                    m.in_flight = false;
                    m.visible_at = now + delay.as_millis().div_ceil(1000) as u64 * 1000;
                }
            }
        }
        Ok(())
    }

    async fn depth(&self) -> Result<Depth, Error> {
        let now = self.clock.now_ms();
        let s = self.state();
        let mut depth = Depth::default();
        for m in &s.messages {
            if m.in_flight && m.visible_at > now {
                depth.in_flight += 1;
            } else if m.visible_at > now {
                depth.delayed += 1;
            } else {
                depth.visible += 1;
            }
        }
        Ok(depth)
    }

    /// This queue never gives up on a message (`max_receives: None`).
    async fn dead_lettered(&self, _max: usize) -> Result<Vec<DeadLettered>, Error> {
        Ok(Vec::new())
    }

    async fn redrive(&self, _only: Option<&str>) -> Result<u64, Error> {
        Ok(0)
    }
}

#[async_trait]
impl Backend for FaultyBackend {
    fn capabilities(&self) -> Capabilities {
        self.caps.clone()
    }

    /// Writes, then each send, then the ack, with a chance of a crash before
    /// each part.
    async fn checkpoint(&self, checkpoint: Checkpoint) -> Result<(), Error> {
        if self.crashed() {
            return Err(down());
        }
        gantry_store::check_batch(&checkpoint.writes, &self.caps)?;
        self.store.write(checkpoint.writes).await?;
        for message in checkpoint.send {
            if self.maybe_crash("between a checkpoint's writes and a send") {
                return Err(down());
            }
            self.enqueue(message);
        }
        if let Some(receipt) = checkpoint.ack {
            if self.maybe_crash("before a checkpoint's ack") {
                return Err(down());
            }
            self.ack_now(&receipt);
        }
        Ok(())
    }
}
