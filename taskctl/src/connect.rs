//! AWS configuration, read once at the edge: the standard chain
//! (environment, profiles, region), `AWS_ENDPOINT_URL`, and `--endpoint-url`,
//! which wins over both.

use std::time::Duration;

use anyhow::{Result, bail};
use aws_config::BehaviorVersion;
use aws_config::timeout::TimeoutConfig;
use taskfleet::{DynamoStore, StoreError};

use crate::cli::GlobalArgs;

/// Opens the DynamoDB store that `global` names.
pub async fn dynamo(global: &GlobalArgs) -> Result<DynamoStore> {
    let table = table_name(&global.table)?;
    let mut loader = aws_config::defaults(BehaviorVersion::latest()).timeout_config(
        TimeoutConfig::builder()
            .connect_timeout(Duration::from_secs(3))
            .operation_attempt_timeout(Duration::from_secs(30))
            .build(),
    );
    if let Some(region) = &global.region {
        loader = loader.region(aws_config::Region::new(region.clone()));
    }
    if let Some(url) = &global.endpoint_url {
        loader = loader.endpoint_url(url);
    }
    let config = loader.load().await;
    let Some(region) = config.region() else {
        return Err(StoreError::NoRegion.into());
    };
    let endpoint = global
        .endpoint_url
        .clone()
        .or_else(|| std::env::var("AWS_ENDPOINT_URL_DYNAMODB").ok())
        .or_else(|| std::env::var("AWS_ENDPOINT_URL").ok())
        .unwrap_or_else(|| format!("DynamoDB in {region}"));
    Ok(DynamoStore::new(
        aws_sdk_dynamodb_client(&config),
        table,
        endpoint,
    ))
}

fn aws_sdk_dynamodb_client(config: &aws_config::SdkConfig) -> taskfleet::store::dynamo::Client {
    taskfleet::store::dynamo::Client::new(config)
}

/// The table name in a `--table` value.
pub fn table_name(locator: &str) -> Result<String> {
    let name = locator.strip_prefix("dynamodb://").unwrap_or(locator);
    if let Some((scheme, _)) = name.split_once("://") {
        bail!("--table {locator}: unknown store '{scheme}'; use NAME or dynamodb://NAME");
    }
    let valid = (3..=255).contains(&name.len())
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '-' | '.'));
    if !valid {
        bail!(
            "--table {locator}: a DynamoDB table name is 3 to 255 letters, digits, '_', '-' or '.'"
        );
    }
    Ok(name.to_owned())
}
