//! Building a [`DynamoStore`] from AWS configuration, in one place for
//! every binary.
//!
//! The binaries read flags and environment at their edge into
//! [`AwsOptions`]; this module hands them to the SDK's standard chain
//! (environment, profiles, instance roles), where an explicit endpoint or
//! region beats the environment's.

use std::time::Duration;

use aws_config::BehaviorVersion;
use aws_config::timeout::TimeoutConfig;

use crate::store::StoreError;
use crate::store::dynamo::DynamoStore;

/// Where the task table is and how to reach it.
#[derive(Debug, Clone, Default)]
pub struct AwsOptions {
    /// `NAME` or `dynamodb://NAME`.
    pub table: String,
    /// An explicit endpoint (DynamoDB Local, a VPC endpoint...).
    pub endpoint_url: Option<String>,
    /// An explicit region.
    pub region: Option<String>,
}

/// The table name in a `--table` value, checked against DynamoDB's rules.
pub fn table_name(locator: &str) -> Result<String, String> {
    let name = locator.strip_prefix("dynamodb://").unwrap_or(locator);
    if let Some((scheme, _)) = name.split_once("://") {
        return Err(format!(
            "--table {locator}: unknown store '{scheme}'; use NAME or dynamodb://NAME"
        ));
    }
    let valid = (3..=255).contains(&name.len())
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '-' | '.'));
    if valid {
        Ok(name.to_owned())
    } else {
        Err(format!(
            "--table {locator}: a DynamoDB table name is 3 to 255 letters, digits, '_', '-' or '.'"
        ))
    }
}

/// Opens the DynamoDB store `options` name. `endpoint_env` is the endpoint
/// the environment sets (`AWS_ENDPOINT_URL_DYNAMODB` / `AWS_ENDPOINT_URL`),
/// used only to describe where requests go.
pub async fn dynamo(
    options: &AwsOptions,
    endpoint_env: Option<String>,
) -> Result<DynamoStore, ConnectError> {
    let table = table_name(&options.table).map_err(ConnectError::Table)?;
    let mut loader = aws_config::defaults(BehaviorVersion::latest()).timeout_config(
        TimeoutConfig::builder()
            .connect_timeout(Duration::from_secs(3))
            .operation_attempt_timeout(Duration::from_secs(30))
            .build(),
    );
    if let Some(region) = &options.region {
        loader = loader.region(aws_config::Region::new(region.clone()));
    }
    if let Some(url) = &options.endpoint_url {
        loader = loader.endpoint_url(url);
    }
    let config = loader.load().await;
    let Some(region) = config.region() else {
        return Err(ConnectError::Store(StoreError::NoRegion));
    };
    let endpoint = options
        .endpoint_url
        .clone()
        .or(endpoint_env)
        .unwrap_or_else(|| format!("DynamoDB in {region}"));
    Ok(DynamoStore::new(
        aws_sdk_dynamodb::Client::new(&config),
        table,
        endpoint,
    ))
}

/// Why a store could not be opened.
#[derive(Debug, thiserror::Error)]
pub enum ConnectError {
    /// The table name is not valid.
    #[error("{0}")]
    Table(String),
    /// The configuration is incomplete.
    #[error(transparent)]
    Store(#[from] StoreError),
}
