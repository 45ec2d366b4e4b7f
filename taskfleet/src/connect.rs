//! Opening the store a `--table` value names, in one place for every
//! binary.
//!
//! - `sqlite://PATH`: the embedded store in one file.
//! - `dynamodb://NAME`, or a bare `NAME`: a DynamoDB table, through the
//!   SDK's standard chain (environment, profiles, instance roles), where an
//!   explicit endpoint or region beats the environment's.
//!
//! With nothing given, the binaries use [`DEFAULT_TABLE`]: the embedded
//! store in the `.taskfleet/` state directory of the current directory.
//!
//! The binaries read flags and environment at their edge into
//! [`AwsOptions`] and pass them here.
//!
//! EC2 clients (for launch templates and the fleet) and S3 clients (agent
//! binaries, sheets) are built here too, by [`ec2`] and [`s3`], under the
//! same rule: an explicit endpoint or region beats the environment's
//! (`AWS_ENDPOINT_URL_EC2`, `AWS_ENDPOINT_URL`, `AWS_REGION`, the profile).
//!
//! Every client carries the [`crate::iam::Guard`] of its caller (the
//! options' `caller`): it refuses an operation the binary's IAM policy
//! does not grant before sending it.

use std::time::Duration;

use aws_config::BehaviorVersion;
use aws_config::timeout::TimeoutConfig;

use std::path::PathBuf;

use crate::iam::{Caller, Guard};
use crate::store::dynamo::DynamoStore;
use crate::store::sqlite::SqliteStore;
use crate::store::{Store, StoreError};

/// Where tasks live when nothing else is said.
pub const DEFAULT_TABLE: &str = "sqlite://.taskfleet/tasks.db";

/// What a `--table` value names.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Locator {
    /// A DynamoDB table.
    Dynamo(String),
    /// An embedded store file.
    Sqlite(PathBuf),
}

impl Locator {
    /// Parses `sqlite://PATH`, `dynamodb://NAME` or `NAME`.
    pub fn parse(text: &str) -> Result<Self, String> {
        if let Some(path) = text.strip_prefix("sqlite://") {
            if path.is_empty() {
                return Err(format!(
                    "--table {text}: give a file, e.g. sqlite://.taskfleet/tasks.db"
                ));
            }
            return Ok(Locator::Sqlite(PathBuf::from(path)));
        }
        table_name(text).map(Locator::Dynamo)
    }
}

/// Opens the store `options.table` names; an embedded store that does not
/// exist yet is an error that says to run `taskctl init`.
pub async fn open(
    options: &AwsOptions,
    endpoint_env: Option<String>,
) -> Result<Store, ConnectError> {
    match Locator::parse(&options.table).map_err(ConnectError::Table)? {
        Locator::Sqlite(path) => Ok(Store::Sqlite(SqliteStore::open(&path)?)),
        Locator::Dynamo(_) => Ok(Store::Dynamo(dynamo(options, endpoint_env).await?)),
    }
}

/// Opens the store for `taskctl init`: the embedded file is created.
pub async fn open_for_init(
    options: &AwsOptions,
    endpoint_env: Option<String>,
) -> Result<(Store, bool), ConnectError> {
    match Locator::parse(&options.table).map_err(ConnectError::Table)? {
        Locator::Sqlite(path) => {
            let (store, created) = SqliteStore::init(&path)?;
            Ok((Store::Sqlite(store), created))
        }
        Locator::Dynamo(_) => Ok((Store::Dynamo(dynamo(options, endpoint_env).await?), false)),
    }
}

/// Where the task table is and how to reach it.
#[derive(Debug, Clone, Default)]
pub struct AwsOptions {
    /// `NAME` or `dynamodb://NAME`.
    pub table: String,
    /// An explicit endpoint (DynamoDB Local, a VPC endpoint...).
    pub endpoint_url: Option<String>,
    /// An explicit region.
    pub region: Option<String>,
    /// Whose calls these are: the binary's IAM policy.
    pub caller: Caller,
}

/// The table name in a `--table` value, checked against DynamoDB's rules.
pub fn table_name(locator: &str) -> Result<String, String> {
    let name = locator.strip_prefix("dynamodb://").unwrap_or(locator);
    if let Some((scheme, _)) = name.split_once("://") {
        return Err(format!(
            "--table {locator}: unknown store '{scheme}'; use sqlite://PATH, dynamodb://NAME or NAME"
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
    let config = sdk_config(options.region.as_deref(), options.endpoint_url.as_deref()).await;
    let Some(region) = config.region() else {
        return Err(ConnectError::Store(StoreError::NoRegion));
    };
    let endpoint = options
        .endpoint_url
        .clone()
        .or(endpoint_env)
        .unwrap_or_else(|| format!("DynamoDB in {region}"));
    let conf = aws_sdk_dynamodb::config::Builder::from(&config)
        .interceptor(Guard(options.caller))
        .build();
    Ok(DynamoStore::new(
        aws_sdk_dynamodb::Client::from_conf(conf),
        table,
        endpoint,
    ))
}

/// How to reach EC2: the flags that beat the environment.
#[derive(Debug, Clone, Default)]
pub struct Ec2Options {
    /// An explicit EC2 endpoint (an emulator, a VPC endpoint...); without
    /// it the SDK's rules apply (`AWS_ENDPOINT_URL_EC2`, `AWS_ENDPOINT_URL`,
    /// then the region's endpoint).
    pub endpoint_url: Option<String>,
    /// An explicit region.
    pub region: Option<String>,
    /// Whose calls these are: the binary's IAM policy.
    pub caller: Caller,
}

/// An EC2 client for `options`, configured like the DynamoDB one (the
/// same timeouts, credentials chain and precedence of explicit settings).
pub async fn ec2(options: &Ec2Options) -> Result<aws_sdk_ec2::Client, ConnectError> {
    let config = sdk_config(options.region.as_deref(), options.endpoint_url.as_deref()).await;
    if config.region().is_none() {
        return Err(ConnectError::Store(StoreError::NoRegion));
    }
    let conf = aws_sdk_ec2::config::Builder::from(&config)
        .interceptor(Guard(options.caller))
        .build();
    Ok(aws_sdk_ec2::Client::from_conf(conf))
}

/// How to reach S3: the flags that beat the environment.
#[derive(Debug, Clone, Default)]
pub struct S3Options {
    /// An explicit S3 endpoint; without it the SDK's rules apply
    /// (`AWS_ENDPOINT_URL_S3`, `AWS_ENDPOINT_URL`, then the region's).
    pub endpoint_url: Option<String>,
    /// An explicit region.
    pub region: Option<String>,
    /// Address buckets by path: an emulator or a custom endpoint has no
    /// per-bucket host names.
    pub path_style: bool,
    /// Whose calls these are: the binary's IAM policy.
    pub caller: Caller,
}

/// An S3 client for `options`, configured like the others.
pub async fn s3(options: &S3Options) -> aws_sdk_s3::Client {
    let config = sdk_config(options.region.as_deref(), options.endpoint_url.as_deref()).await;
    let conf = aws_sdk_s3::config::Builder::from(&config)
        .force_path_style(options.path_style)
        .interceptor(Guard(options.caller))
        .build();
    aws_sdk_s3::Client::from_conf(conf)
}

/// The SDK configuration every client starts from: the standard chain, a
/// short connect timeout, and explicit region and endpoint on top.
pub async fn sdk_config(region: Option<&str>, endpoint_url: Option<&str>) -> aws_config::SdkConfig {
    let mut loader = aws_config::defaults(BehaviorVersion::latest()).timeout_config(
        TimeoutConfig::builder()
            .connect_timeout(Duration::from_secs(3))
            .operation_attempt_timeout(Duration::from_secs(30))
            .build(),
    );
    if let Some(region) = region {
        loader = loader.region(aws_config::Region::new(region.to_owned()));
    }
    if let Some(url) = endpoint_url {
        loader = loader.endpoint_url(url);
    }
    loader.load().await
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
