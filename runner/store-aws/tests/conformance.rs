//! The store contract's conformance suite on DynamoDB and SQS, reached by
//! the real AWS SDK clients on `moto_server`: each test on a table and a
//! queue of its own, made by `gantry backend init`'s code.

use std::sync::Arc;

use gantry_store::Backend;
use gantry_store_aws::{AwsBackend, Emulator, Location, create, sdk_config};

async fn fresh() -> Arc<dyn Backend> {
    let emulator = Emulator {
        endpoint: gantry_tests::moto(),
    };
    let config = sdk_config(Some(&emulator)).await;
    let name = gantry_tests::unique_name("conformance");
    let created = create(&config, &name, &name)
        .await
        .expect("create the table and queue");
    let location = Location {
        table: name,
        queue_url: created.queue_url,
    };
    Arc::new(
        AwsBackend::connect(&config, location, gantry_store::system_clock())
            .await
            .expect("connect"),
    )
}

gantry_store::conformance_tests!(fresh());
