//! `gantry backend init`: the table (with its `due` index and TTL on), the
//! queue and its dead-letter queue with the redrive policy, each created
//! only when missing. For development and tests; production uses `infra/`.

use aws_config::SdkConfig;
use aws_sdk_dynamodb::types::{
    AttributeDefinition, BillingMode, GlobalSecondaryIndex, KeySchemaElement, KeyType, Projection,
    ProjectionType, ScalarAttributeType, TimeToLiveSpecification,
};
use aws_sdk_sqs::types::QueueAttributeName;
use gantry_store::Error;

use crate::errors::from_sdk;
use crate::table::{DUE_AT, DUE_INDEX, DUE_PK, PK, SK, TTL};

/// A message the engine never handled to the end (a process that died on it
/// every time) moves to the dead-letter queue after this many receives: well
/// above the engine's own `--max-receives` (20), so the engine decides first.
pub const REDRIVE_AFTER_RECEIVES: u32 = 50;

/// What [`create`] made or found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Created {
    /// The queue's URL, for `--sqs-queue-url`.
    pub queue_url: String,
    /// The dead-letter queue's URL.
    pub dead_letter_url: String,
    /// Whether the table was created now (not found).
    pub table_created: bool,
}

fn element(name: &str, kind: KeyType) -> Result<KeySchemaElement, Error> {
    KeySchemaElement::builder()
        .attribute_name(name)
        .key_type(kind)
        .build()
        .map_err(|e| Error::Invalid(e.to_string()))
}

fn attribute(name: &str, kind: ScalarAttributeType) -> Result<AttributeDefinition, Error> {
    AttributeDefinition::builder()
        .attribute_name(name)
        .attribute_type(kind)
        .build()
        .map_err(|e| Error::Invalid(e.to_string()))
}

/// Creates `table` and the queue `queue` (with `queue-dlq`) when missing.
pub async fn create(config: &SdkConfig, table: &str, queue: &str) -> Result<Created, Error> {
    let table_created = create_table(&aws_sdk_dynamodb::Client::new(config), table).await?;
    let sqs = aws_sdk_sqs::Client::new(config);
    let dead_letter_url = create_queue(&sqs, &format!("{queue}-dlq"), None).await?;
    let arn = sqs
        .get_queue_attributes()
        .queue_url(&dead_letter_url)
        .attribute_names(QueueAttributeName::QueueArn)
        .send()
        .await
        .map_err(|e| from_sdk("GetQueueAttributes", &e))?
        .attributes()
        .and_then(|a| a.get(&QueueAttributeName::QueueArn).cloned())
        .ok_or_else(|| Error::unavailable("the dead-letter queue has no ARN"))?;
    let redrive = serde_json::json!({
        "deadLetterTargetArn": arn,
        "maxReceiveCount": REDRIVE_AFTER_RECEIVES.to_string(),
    })
    .to_string();
    let queue_url = create_queue(&sqs, queue, Some(redrive)).await?;
    Ok(Created {
        queue_url,
        dead_letter_url,
        table_created,
    })
}

async fn create_table(ddb: &aws_sdk_dynamodb::Client, table: &str) -> Result<bool, Error> {
    let exists = ddb.describe_table().table_name(table).send().await;
    let created = match exists {
        Ok(_) => false,
        Err(e)
            if e.as_service_error()
                .is_some_and(|s| s.is_resource_not_found_exception()) =>
        {
            let due = GlobalSecondaryIndex::builder()
                .index_name(DUE_INDEX)
                .key_schema(element(DUE_PK, KeyType::Hash)?)
                .key_schema(element(DUE_AT, KeyType::Range)?)
                .projection(
                    Projection::builder()
                        .projection_type(ProjectionType::KeysOnly)
                        .build(),
                )
                .build()
                .map_err(|e| Error::Invalid(e.to_string()))?;
            let answer = ddb
                .create_table()
                .table_name(table)
                .billing_mode(BillingMode::PayPerRequest)
                .attribute_definitions(attribute(PK, ScalarAttributeType::S)?)
                .attribute_definitions(attribute(SK, ScalarAttributeType::S)?)
                .attribute_definitions(attribute(DUE_PK, ScalarAttributeType::S)?)
                .attribute_definitions(attribute(DUE_AT, ScalarAttributeType::N)?)
                .key_schema(element(PK, KeyType::Hash)?)
                .key_schema(element(SK, KeyType::Range)?)
                .global_secondary_indexes(due)
                .send()
                .await;
            match answer {
                Ok(_) => true,
                // Another init made it meanwhile.
                Err(e)
                    if e.as_service_error()
                        .is_some_and(|s| s.is_resource_in_use_exception()) =>
                {
                    false
                }
                Err(e) => return Err(from_sdk("CreateTable", &e)),
            }
        }
        Err(e) => return Err(from_sdk("DescribeTable", &e)),
    };
    wait_until_active(ddb, table).await?;
    let ttl = ddb
        .describe_time_to_live()
        .table_name(table)
        .send()
        .await
        .map_err(|e| from_sdk("DescribeTimeToLive", &e))?;
    let enabled = ttl
        .time_to_live_description()
        .and_then(|d| d.attribute_name())
        .is_some_and(|name| name == TTL);
    if !enabled {
        let spec = TimeToLiveSpecification::builder()
            .enabled(true)
            .attribute_name(TTL)
            .build()
            .map_err(|e| Error::Invalid(e.to_string()))?;
        ddb.update_time_to_live()
            .table_name(table)
            .time_to_live_specification(spec)
            .send()
            .await
            .map_err(|e| from_sdk("UpdateTimeToLive", &e))?;
    }
    Ok(created)
}

/// Waits (up to 2 minutes) for `table` to be ACTIVE.
async fn wait_until_active(ddb: &aws_sdk_dynamodb::Client, table: &str) -> Result<(), Error> {
    use aws_sdk_dynamodb::types::TableStatus;
    for _ in 0..240 {
        let answer = ddb
            .describe_table()
            .table_name(table)
            .send()
            .await
            .map_err(|e| from_sdk("DescribeTable", &e))?;
        if answer
            .table()
            .and_then(|t| t.table_status())
            .is_some_and(|s| *s == TableStatus::Active)
        {
            return Ok(());
        }
        tokio::time::sleep(std::time::Duration::from_millis(500)).await;
    }
    Err(Error::unavailable(format!(
        "table {table} did not become ACTIVE within 2 minutes"
    )))
}

/// The URL of queue `name`, created (with `redrive`) when missing.
async fn create_queue(
    sqs: &aws_sdk_sqs::Client,
    name: &str,
    redrive: Option<String>,
) -> Result<String, Error> {
    let mut request = sqs.create_queue().queue_name(name);
    if let Some(policy) = redrive {
        request = request.attributes(QueueAttributeName::RedrivePolicy, policy);
    }
    let answer = request
        .send()
        .await
        .map_err(|e| from_sdk("CreateQueue", &e))?;
    answer
        .queue_url()
        .map(str::to_string)
        .ok_or_else(|| Error::unavailable(format!("CreateQueue {name} answered no URL")))
}
