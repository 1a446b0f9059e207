//! [`gantry_store::Store`] on one DynamoDB table.
//!
//! | attribute | what |
//! |---|---|
//! | `pk` (S, hash key) | the item's partition |
//! | `sk` (S, range key) | its sort key: `list` is a `Query` on `pk` |
//! | `v` (B) | the value |
//! | `ver` (N) | the version: 1 when created, one more per write |
//! | `n` (N) | a counter's value (`Write::Increment`), instead of `v` |
//! | `exp_ms` (N) | when it expires, Unix ms: reads leave it out from then on |
//! | `exp` (N) | the same in seconds: the table's TTL attribute (deletes it later) |
//! | `due_pk` (S), `due_at` (N) | `"due"` and the due time in ms: the `due` index (keys only) |

use std::collections::HashMap;
use std::time::Duration;

use aws_sdk_dynamodb::Client;
use aws_sdk_dynamodb::primitives::Blob;
use aws_sdk_dynamodb::types::{
    AttributeValue, ConditionCheck, Delete, KeysAndAttributes, TransactWriteItem, Update,
};
use gantry_store::{Error, Item, Key, ListQuery, Page, Precondition, Write};

use aws_sdk_dynamodb::config::http::HttpResponse;
use aws_sdk_dynamodb::error::{ProvideErrorMetadata, SdkError};

use crate::errors::from_sdk;

pub(crate) const PK: &str = "pk";
pub(crate) const SK: &str = "sk";
const VALUE: &str = "v";
const VERSION: &str = "ver";
const COUNTER: &str = "n";
const EXPIRES_MS: &str = "exp_ms";
/// The table's TTL attribute, in seconds.
pub(crate) const TTL: &str = "exp";
pub(crate) const DUE_PK: &str = "due_pk";
pub(crate) const DUE_AT: &str = "due_at";
/// The global secondary index [`gantry_store::Store::due`] queries.
pub(crate) const DUE_INDEX: &str = "due";
/// The one partition of the due index.
const DUE_PARTITION: &str = "due";
/// The most keys one `BatchGetItem` may ask for.
const BATCH_GET_KEYS: usize = 100;
/// How often a `BatchGetItem` asks again for keys left unprocessed.
const UNPROCESSED_RETRIES: u32 = 5;

/// The table and its client.
#[derive(Clone)]
pub(crate) struct Table {
    pub client: Client,
    pub name: String,
}

/// Names and values an expression uses, collected as it is written.
#[derive(Default)]
struct Expr {
    names: HashMap<String, String>,
    values: HashMap<String, AttributeValue>,
}

impl Expr {
    fn name(&mut self, attribute: &str) -> String {
        let placeholder = format!("#{attribute}");
        self.names.insert(placeholder.clone(), attribute.into());
        placeholder
    }

    fn value(&mut self, value: AttributeValue) -> String {
        let placeholder = format!(":v{}", self.values.len());
        self.values.insert(placeholder.clone(), value);
        placeholder
    }

    fn number(&mut self, n: impl ToString) -> String {
        self.value(AttributeValue::N(n.to_string()))
    }

    /// "Alive": no expiry, or one still ahead of `now_ms`.
    fn alive(&mut self, now_ms: u64) -> String {
        let exp = self.name(EXPIRES_MS);
        let now = self.number(now_ms);
        format!("(attribute_not_exists({exp}) OR {exp} > {now})")
    }

    /// The condition of `precondition`, if it has one.
    fn condition(&mut self, precondition: Precondition, now_ms: u64) -> Option<String> {
        match precondition {
            Precondition::None => None,
            Precondition::DoesNotExist => {
                let pk = self.name(PK);
                let exp = self.name(EXPIRES_MS);
                let now = self.number(now_ms);
                Some(format!("attribute_not_exists({pk}) OR {exp} <= {now}"))
            }
            Precondition::MatchesVersion(version) => Some(self.version_is(version, now_ms)),
        }
    }

    fn version_is(&mut self, version: u64, now_ms: u64) -> String {
        let ver = self.name(VERSION);
        let want = self.number(version);
        let alive = self.alive(now_ms);
        format!("{ver} = {want} AND {alive}")
    }
}

/// What a precondition expected, for [`Error::Conflict`].
fn expected(write: &Write) -> String {
    match write {
        Write::Put(p) => describe(p.precondition),
        Write::Delete { precondition, .. } => describe(*precondition),
        Write::Check { version, .. } => format!("version {version}"),
        Write::Increment { .. } => "anything".into(),
    }
}

fn describe(precondition: Precondition) -> String {
    match precondition {
        Precondition::None => "anything".into(),
        Precondition::DoesNotExist => "no item".into(),
        Precondition::MatchesVersion(v) => format!("version {v}"),
    }
}

fn key_of(key: &Key) -> HashMap<String, AttributeValue> {
    HashMap::from([
        (PK.to_string(), AttributeValue::S(key.partition.clone())),
        (SK.to_string(), AttributeValue::S(key.sort.clone())),
    ])
}

fn number(item: &HashMap<String, AttributeValue>, name: &str) -> Option<i128> {
    match item.get(name) {
        Some(AttributeValue::N(n)) => n.parse().ok(),
        _ => None,
    }
}

fn string(item: &HashMap<String, AttributeValue>, name: &str) -> Option<String> {
    match item.get(name) {
        Some(AttributeValue::S(s)) => Some(s.clone()),
        _ => None,
    }
}

/// A stored item, or `None` when it has expired by `now_ms`.
fn decode(item: &HashMap<String, AttributeValue>, now_ms: u64) -> Result<Option<Item>, Error> {
    if number(item, EXPIRES_MS).is_some_and(|at| at <= i128::from(now_ms)) {
        return Ok(None);
    }
    let (Some(partition), Some(sort)) = (string(item, PK), string(item, SK)) else {
        return Err(Error::Corrupt("an item without its key".into()));
    };
    let value = match (item.get(VALUE), number(item, COUNTER)) {
        (Some(AttributeValue::B(blob)), _) => blob.as_ref().to_vec(),
        (_, Some(n)) => n.to_string().into_bytes(),
        _ => Vec::new(),
    };
    let version = number(item, VERSION)
        .and_then(|v| u64::try_from(v).ok())
        .ok_or_else(|| Error::Corrupt(format!("item {partition}#{sort} has no version")))?;
    Ok(Some(Item {
        key: Key::new(partition, sort),
        value,
        version,
    }))
}

/// One write, as the parts of a DynamoDB request.
enum Request {
    Update(Update),
    Delete(Delete),
    Check(ConditionCheck),
}

fn built<T>(
    what: &str,
    result: Result<T, aws_sdk_dynamodb::error::BuildError>,
) -> Result<T, Error> {
    result.map_err(|e| Error::Invalid(format!("{what}: {e}")))
}

impl Table {
    /// `write` as a request on this table.
    fn request(&self, write: &Write, now_ms: u64) -> Result<Request, Error> {
        let mut e = Expr::default();
        match write {
            Write::Put(put) => {
                let v = e.name(VALUE);
                let value = e.value(AttributeValue::B(Blob::new(put.value.clone())));
                let ver = e.name(VERSION);
                let version = match put.precondition {
                    Precondition::DoesNotExist => e.number(1),
                    Precondition::MatchesVersion(old) => e.number(old + 1),
                    Precondition::None => {
                        let zero = e.number(0);
                        let one = e.number(1);
                        format!("if_not_exists({ver}, {zero}) + {one}")
                    }
                };
                let mut set = vec![format!("{v} = {value}"), format!("{ver} = {version}")];
                let mut remove = vec![e.name(COUNTER)];
                match put.expires_at_ms {
                    Some(at) => {
                        let (ms, ttl) = (e.name(EXPIRES_MS), e.name(TTL));
                        set.push(format!("{ms} = {}", e.number(at)));
                        set.push(format!("{ttl} = {}", e.number(at.div_ceil(1000))));
                    }
                    None => remove.extend([e.name(EXPIRES_MS), e.name(TTL)]),
                }
                match put.due_at_ms {
                    Some(at) => {
                        let (pk, due) = (e.name(DUE_PK), e.name(DUE_AT));
                        let partition = e.value(AttributeValue::S(DUE_PARTITION.into()));
                        set.push(format!("{pk} = {partition}"));
                        set.push(format!("{due} = {}", e.number(at)));
                    }
                    None => remove.extend([e.name(DUE_PK), e.name(DUE_AT)]),
                }
                let expression = format!("SET {} REMOVE {}", set.join(", "), remove.join(", "));
                let condition = e.condition(put.precondition, now_ms);
                let update = Update::builder()
                    .table_name(&self.name)
                    .set_key(Some(key_of(&put.key)))
                    .update_expression(expression)
                    .set_condition_expression(condition)
                    .set_expression_attribute_names(Some(e.names))
                    .set_expression_attribute_values(Some(e.values))
                    .build();
                Ok(Request::Update(built("update", update)?))
            }
            Write::Increment { key, delta } => {
                let ver = e.name(VERSION);
                let (zero, one) = (e.number(0), e.number(1));
                let n = e.name(COUNTER);
                let d = e.number(delta);
                let update = Update::builder()
                    .table_name(&self.name)
                    .set_key(Some(key_of(key)))
                    .update_expression(format!(
                        "SET {ver} = if_not_exists({ver}, {zero}) + {one} ADD {n} {d}"
                    ))
                    .set_expression_attribute_names(Some(e.names))
                    .set_expression_attribute_values(Some(e.values))
                    .build();
                Ok(Request::Update(built("increment", update)?))
            }
            Write::Delete { key, precondition } => {
                let condition = e.condition(*precondition, now_ms);
                let (names, values) = if condition.is_some() {
                    (Some(e.names), Some(e.values))
                } else {
                    (None, None)
                };
                let delete = Delete::builder()
                    .table_name(&self.name)
                    .set_key(Some(key_of(key)))
                    .set_condition_expression(condition)
                    .set_expression_attribute_names(names)
                    .set_expression_attribute_values(values)
                    .build();
                Ok(Request::Delete(built("delete", delete)?))
            }
            Write::Check { key, version } => {
                let condition = e.version_is(*version, now_ms);
                let check = ConditionCheck::builder()
                    .table_name(&self.name)
                    .set_key(Some(key_of(key)))
                    .condition_expression(condition)
                    .set_expression_attribute_names(Some(e.names))
                    .set_expression_attribute_values(Some(e.values))
                    .build();
                Ok(Request::Check(built("condition check", check)?))
            }
        }
    }

    /// The item at `key`, strongly consistent.
    pub async fn get(&self, key: &Key, now_ms: u64) -> Result<Option<Item>, Error> {
        key.check()?;
        let answer = self
            .client
            .get_item()
            .table_name(&self.name)
            .set_key(Some(key_of(key)))
            .consistent_read(true)
            .send()
            .await
            .map_err(|e| from_sdk("GetItem", &e))?;
        match answer.item() {
            Some(item) => decode(item, now_ms),
            None => Ok(None),
        }
    }

    /// The items at `keys`, in their order: `BatchGetItem`s of up to
    /// [`BATCH_GET_KEYS`] distinct keys, strongly consistent, asking again
    /// for the keys DynamoDB left unprocessed (it may under load).
    pub async fn get_many(&self, keys: &[Key], now_ms: u64) -> Result<Vec<Option<Item>>, Error> {
        let mut found: HashMap<Key, Item> = HashMap::new();
        let mut distinct: Vec<&Key> = Vec::new();
        for key in keys {
            key.check()?;
            if !distinct.contains(&key) {
                distinct.push(key);
            }
        }
        for chunk in distinct.chunks(BATCH_GET_KEYS) {
            let mut pending: Vec<HashMap<String, AttributeValue>> =
                chunk.iter().map(|key| key_of(key)).collect();
            for attempt in 0.. {
                let request = built(
                    "BatchGetItem",
                    KeysAndAttributes::builder()
                        .set_keys(Some(pending))
                        .consistent_read(true)
                        .build(),
                )?;
                let answer = self
                    .client
                    .batch_get_item()
                    .request_items(&self.name, request)
                    .send()
                    .await
                    .map_err(|e| from_sdk("BatchGetItem", &e))?;
                for item in answer
                    .responses()
                    .and_then(|r| r.get(&self.name))
                    .into_iter()
                    .flatten()
                {
                    if let Some(item) = decode(item, now_ms)? {
                        found.insert(item.key.clone(), item);
                    }
                }
                pending = answer
                    .unprocessed_keys()
                    .and_then(|u| u.get(&self.name))
                    .map(|k| k.keys().to_vec())
                    .unwrap_or_default();
                if pending.is_empty() {
                    break;
                }
                if attempt == UNPROCESSED_RETRIES {
                    return Err(Error::unavailable(format!(
                        "BatchGetItem left {} keys unprocessed {UNPROCESSED_RETRIES} times",
                        pending.len()
                    )));
                }
                tokio::time::sleep(Duration::from_millis(50 << attempt)).await;
            }
        }
        Ok(keys.iter().map(|key| found.get(key).cloned()).collect())
    }

    /// One page of a partition: a `Query`, strongly consistent.
    pub async fn list(&self, query: &ListQuery, now_ms: u64) -> Result<Page, Error> {
        let mut e = Expr::default();
        let pk = e.name(PK);
        let partition = e.value(AttributeValue::S(query.partition.clone()));
        let mut condition = format!("{pk} = {partition}");
        if !query.prefix.is_empty() {
            let sk = e.name(SK);
            let prefix = e.value(AttributeValue::S(query.prefix.clone()));
            condition.push_str(&format!(" AND begins_with({sk}, {prefix})"));
        }
        let start = query
            .after
            .as_ref()
            .map(|after| key_of(&Key::new(query.partition.clone(), after.clone())));
        let answer = self
            .client
            .query()
            .table_name(&self.name)
            .key_condition_expression(condition)
            .set_expression_attribute_names(Some(e.names))
            .set_expression_attribute_values(Some(e.values))
            .scan_index_forward(!query.descending)
            .limit(query.limit.clamp(1, 1000) as i32)
            .consistent_read(true)
            .set_exclusive_start_key(start)
            .send()
            .await
            .map_err(|e| from_sdk("Query", &e))?;
        let mut items = Vec::new();
        for item in answer.items() {
            if let Some(item) = decode(item, now_ms)? {
                items.push(item);
            }
        }
        let next = answer.last_evaluated_key().and_then(|k| string(k, SK));
        Ok(Page { items, next })
    }

    /// Keys due by `before_ms`, from the `due` index (eventually
    /// consistent, as the contract allows).
    pub async fn due(&self, before_ms: u64, limit: usize) -> Result<Vec<Key>, Error> {
        let mut e = Expr::default();
        let pk = e.name(DUE_PK);
        let partition = e.value(AttributeValue::S(DUE_PARTITION.into()));
        let at = e.name(DUE_AT);
        let before = e.number(before_ms);
        let answer = self
            .client
            .query()
            .table_name(&self.name)
            .index_name(DUE_INDEX)
            .key_condition_expression(format!("{pk} = {partition} AND {at} <= {before}"))
            .set_expression_attribute_names(Some(e.names))
            .set_expression_attribute_values(Some(e.values))
            .limit(limit.clamp(1, 1000) as i32)
            .send()
            .await
            .map_err(|e| from_sdk("Query due", &e))?;
        Ok(answer
            .items()
            .iter()
            .filter_map(|item| Some(Key::new(string(item, PK)?, string(item, SK)?)))
            .collect())
    }

    /// Applies `writes` (checked by the caller): one call for one write,
    /// a transaction for several.
    pub async fn write(&self, writes: &[Write], now_ms: u64) -> Result<(), Error> {
        match writes {
            [] => Ok(()),
            [single] if !matches!(single, Write::Check { .. }) => {
                self.write_one(single, now_ms).await
            }
            several => self.transact(several, now_ms).await,
        }
    }

    async fn write_one(&self, write: &Write, now_ms: u64) -> Result<(), Error> {
        let conflict = || Error::Conflict {
            key: write.key().clone(),
            expected: expected(write),
        };
        match self.request(write, now_ms)? {
            Request::Update(u) => {
                let call = self
                    .client
                    .update_item()
                    .table_name(u.table_name())
                    .set_key(Some(u.key().clone()))
                    .update_expression(u.update_expression())
                    .set_condition_expression(u.condition_expression().map(str::to_string))
                    .set_expression_attribute_names(u.expression_attribute_names().cloned())
                    .set_expression_attribute_values(u.expression_attribute_values().cloned())
                    .send()
                    .await;
                conditional("UpdateItem", call.map(drop), conflict)
            }
            Request::Delete(d) => {
                let call = self
                    .client
                    .delete_item()
                    .table_name(d.table_name())
                    .set_key(Some(d.key().clone()))
                    .set_condition_expression(d.condition_expression().map(str::to_string))
                    .set_expression_attribute_names(d.expression_attribute_names().cloned())
                    .set_expression_attribute_values(d.expression_attribute_values().cloned())
                    .send()
                    .await;
                conditional("DeleteItem", call.map(drop), conflict)
            }
            Request::Check(_) => self.transact(std::slice::from_ref(write), now_ms).await,
        }
    }

    async fn transact(&self, writes: &[Write], now_ms: u64) -> Result<(), Error> {
        let mut items = Vec::with_capacity(writes.len());
        for write in writes {
            let item = match self.request(write, now_ms)? {
                Request::Update(u) => TransactWriteItem::builder().update(u),
                Request::Delete(d) => TransactWriteItem::builder().delete(d),
                Request::Check(c) => TransactWriteItem::builder().condition_check(c),
            };
            items.push(item.build());
        }
        let answer = self
            .client
            .transact_write_items()
            .set_transact_items(Some(items))
            .client_request_token(request_token())
            .send()
            .await;
        let Err(error) = answer else {
            return Ok(());
        };
        use aws_sdk_dynamodb::operation::transact_write_items::TransactWriteItemsError;
        if let Some(TransactWriteItemsError::TransactionCanceledException(cancelled)) =
            error.as_service_error()
        {
            let codes: Vec<&str> = cancelled
                .cancellation_reasons()
                .iter()
                .map(|r| r.code().unwrap_or("None"))
                .collect();
            return Err(cancelled_error(writes, &codes));
        }
        Err(from_sdk("TransactWriteItems", &error))
    }
}

/// A single conditional write's result: a failed condition is `conflict`.
fn conditional<E>(
    what: &str,
    result: Result<(), SdkError<E, HttpResponse>>,
    conflict: impl FnOnce() -> Error,
) -> Result<(), Error>
where
    E: ProvideErrorMetadata + std::error::Error + 'static,
{
    match result {
        Ok(()) => Ok(()),
        Err(e)
            if e.as_service_error().and_then(|s| s.code())
                == Some("ConditionalCheckFailedException") =>
        {
            Err(conflict())
        }
        Err(e) => Err(from_sdk(what, &e)),
    }
}

/// A cancelled transaction's error, from each item's reason code.
fn cancelled_error(writes: &[Write], codes: &[&str]) -> Error {
    if let Some(i) = codes.iter().position(|c| *c == "ConditionalCheckFailed")
        && let Some(write) = writes.get(i)
    {
        return Error::Conflict {
            key: write.key().clone(),
            expected: expected(write),
        };
    }
    let reasons = codes.join(", ");
    if codes.iter().any(|c| c.contains("Validation")) {
        return Error::Invalid(format!("transaction cancelled: {reasons}"));
    }
    // TransactionConflict (another transaction on one of the items),
    // throttling: nothing was written; trying again may work.
    Error::Unavailable {
        message: format!("transaction cancelled: {reasons}"),
        maybe_applied: false,
    }
}

/// A fresh idempotency token for one transaction: the SDK's own retries of
/// it are applied once.
fn request_token() -> String {
    let mut bytes = [0u8; 16];
    if getrandom::fill(&mut bytes).is_err() {
        bytes = gantry_store::now_ms()
            .to_le_bytes()
            .repeat(2)
            .try_into()
            .unwrap_or([0; 16]);
    }
    hex::encode(bytes)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_cancelled_transaction_names_the_write_whose_condition_failed() {
        let writes = vec![
            Write::put(Key::new("p", "a"), vec![], Precondition::None),
            Write::put(Key::new("p", "b"), vec![], Precondition::MatchesVersion(3)),
        ];
        let e = cancelled_error(&writes, &["None", "ConditionalCheckFailed"]);
        assert_eq!(
            e,
            Error::Conflict {
                key: Key::new("p", "b"),
                expected: "version 3".into()
            }
        );
        let e = cancelled_error(&writes, &["TransactionConflict", "None"]);
        assert!(e.is_retryable(), "{e}");
        let e = cancelled_error(&writes, &["ValidationError", "None"]);
        assert!(matches!(e, Error::Invalid(_)), "{e}");
    }

    #[test]
    fn expired_items_decode_as_absent_and_counters_as_text() {
        let mut item = key_of(&Key::new("p", "s"));
        item.insert(VERSION.into(), AttributeValue::N("2".into()));
        item.insert(COUNTER.into(), AttributeValue::N("-3".into()));
        let decoded = decode(&item, 1_000).expect("ok").expect("alive");
        assert_eq!((decoded.value.as_slice(), decoded.version), (&b"-3"[..], 2));
        item.insert(EXPIRES_MS.into(), AttributeValue::N("1000".into()));
        assert_eq!(decode(&item, 999).expect("ok").map(|i| i.version), Some(2));
        assert_eq!(decode(&item, 1_000).expect("ok"), None);
    }
}
