//! AWS configuration, read once at the edge: flags and environment into
//! [`AwsOptions`], handed to [`taskfleet::connect`].

use anyhow::Result;
use taskfleet::DynamoStore;
use taskfleet::connect::AwsOptions;

use crate::cli::GlobalArgs;

/// Opens the DynamoDB store that `global` names.
pub async fn dynamo(global: &GlobalArgs) -> Result<DynamoStore> {
    let options = AwsOptions {
        table: global.table.clone(),
        endpoint_url: global.endpoint_url.clone(),
        region: global.region.clone(),
    };
    let env_endpoint = std::env::var("AWS_ENDPOINT_URL_DYNAMODB")
        .or_else(|_| std::env::var("AWS_ENDPOINT_URL"))
        .ok();
    Ok(taskfleet::connect::dynamo(&options, env_endpoint).await?)
}
