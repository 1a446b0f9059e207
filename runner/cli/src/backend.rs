//! Which backend a server process uses: the embedded SQLite store in
//! `--data-dir` (the default, nothing else needed), or DynamoDB + SQS
//! (`--backend aws`, in a binary built with `--features aws`), and
//! `gantry backend init`, which creates the AWS resources for development.

use std::path::Path;
use std::process::ExitCode;
use std::sync::Arc;

use anyhow::{Context, bail};
use clap::{Args, ValueEnum};
use gantry_store::Backend;
use gantry_store_sqlite::{Options, SqliteBackend};

/// A backend's kind.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Kind {
    /// One SQLite file in `--data-dir`; one process.
    Embedded,
    /// A DynamoDB table and an SQS queue; any number of processes.
    Aws,
}

/// Where the state and the queue live.
#[derive(Args)]
pub struct BackendArgs {
    /// `embedded` (SQLite in --data-dir) or `aws` (DynamoDB + SQS; the
    /// credentials, region and endpoint come from the standard AWS chain,
    /// so AWS_ENDPOINT_URL points it at an emulator).
    #[arg(long, value_enum, default_value = "embedded", env = "GANTRY_BACKEND")]
    backend: Kind,
    /// The DynamoDB table (`--backend aws`).
    #[arg(long, env = "GANTRY_DYNAMODB_TABLE")]
    dynamodb_table: Option<String>,
    /// The SQS queue's URL (`--backend aws`).
    #[arg(long, env = "GANTRY_SQS_QUEUE_URL")]
    sqs_queue_url: Option<String>,
}

/// The backend `args` name; the embedded one in `data_dir`.
pub async fn open(
    args: &BackendArgs,
    data_dir: &Path,
    fsync: bool,
) -> anyhow::Result<Arc<dyn Backend>> {
    match args.backend {
        Kind::Embedded => {
            let backend = SqliteBackend::open(
                data_dir,
                Options {
                    fsync,
                    ..Options::default()
                },
            )
            .with_context(|| format!("--data-dir {}", data_dir.display()))?;
            Ok(Arc::new(backend))
        }
        Kind::Aws => {
            let (Some(table), Some(queue_url)) = (&args.dynamodb_table, &args.sqs_queue_url) else {
                bail!(
                    "--backend aws needs --dynamodb-table (GANTRY_DYNAMODB_TABLE) and --sqs-queue-url (GANTRY_SQS_QUEUE_URL)"
                );
            };
            aws(table, queue_url).await
        }
    }
}

#[cfg(feature = "aws")]
async fn aws(table: &str, queue_url: &str) -> anyhow::Result<Arc<dyn Backend>> {
    let config = gantry_store_aws::sdk_config(None).await;
    let location = gantry_store_aws::Location {
        table: table.to_string(),
        queue_url: queue_url.to_string(),
    };
    // Test builds: GANTRY_CRASH_AT=written:N dies between a checkpoint's
    // table write and its queue sends.
    let crash = gantry_engine::CrashPoints::from_env();
    let backend =
        gantry_store_aws::AwsBackend::connect(&config, location, gantry_store::system_clock())
            .await
            .with_context(|| format!("the AWS backend (table {table}, queue {queue_url})"))?
            .after_writes(move || crash.reached(gantry_engine::CrashPoint::Written));
    Ok(Arc::new(backend))
}

#[cfg(not(feature = "aws"))]
async fn aws(_table: &str, _queue_url: &str) -> anyhow::Result<Arc<dyn Backend>> {
    bail!(WITHOUT_AWS)
}

#[cfg(not(feature = "aws"))]
const WITHOUT_AWS: &str = "this gantry was built without the AWS backend: build it with `cargo build --release -p gantry-cli --features aws`";

/// `gantry backend init`.
#[derive(Args)]
pub struct InitArgs {
    /// Only `aws` has anything to create.
    #[arg(long, value_enum, env = "GANTRY_BACKEND")]
    backend: Kind,
    /// The table to create (with TTL on and its `due` index).
    #[arg(long, env = "GANTRY_DYNAMODB_TABLE")]
    dynamodb_table: Option<String>,
    /// The queue to create, with `NAME-dlq` as its dead-letter queue.
    #[arg(long)]
    sqs_queue_name: Option<String>,
}

/// Creates the table and the queues when missing; prints the queue URL.
pub async fn init(args: InitArgs) -> anyhow::Result<ExitCode> {
    if args.backend == Kind::Embedded {
        println!("nothing to create: the embedded store creates itself in --data-dir");
        return Ok(ExitCode::SUCCESS);
    }
    let (Some(table), Some(queue)) = (args.dynamodb_table, args.sqs_queue_name) else {
        bail!("--backend aws needs --dynamodb-table and --sqs-queue-name");
    };
    create(&table, &queue).await
}

#[cfg(feature = "aws")]
async fn create(table: &str, queue: &str) -> anyhow::Result<ExitCode> {
    let config = gantry_store_aws::sdk_config(None).await;
    let created = gantry_store_aws::create(&config, table, queue)
        .await
        .with_context(|| format!("creating table {table} and queue {queue}"))?;
    eprintln!(
        "table {table}: {}; queue {queue} with dead-letter queue {queue}-dlq",
        if created.table_created {
            "created"
        } else {
            "already there"
        }
    );
    println!("{}", created.queue_url);
    Ok(ExitCode::SUCCESS)
}

#[cfg(not(feature = "aws"))]
async fn create(_table: &str, _queue: &str) -> anyhow::Result<ExitCode> {
    bail!(WITHOUT_AWS)
}
