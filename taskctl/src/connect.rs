//! Configuration read once at the edge: flags and environment into
//! [`AwsOptions`], handed to [`taskfleet::connect`].

use anyhow::Result;
use taskfleet::connect::{AwsOptions, Ec2Options, S3Options};
use taskfleet::iam::Caller;
use taskfleet::store::Store;

use crate::cli::GlobalArgs;

fn options(global: &GlobalArgs) -> (AwsOptions, Option<String>) {
    let options = AwsOptions {
        table: global.table.clone(),
        endpoint_url: global.endpoint_url.clone(),
        region: global.region.clone(),
        caller: Caller::Operator,
    };
    let env_endpoint = std::env::var("AWS_ENDPOINT_URL_DYNAMODB")
        .or_else(|_| std::env::var("AWS_ENDPOINT_URL"))
        .ok();
    (options, env_endpoint)
}

/// Opens the store that `global` names.
pub async fn open(global: &GlobalArgs) -> Result<Store> {
    let (options, env_endpoint) = options(global);
    Ok(taskfleet::connect::open(&options, env_endpoint).await?)
}

/// Opens (creating an embedded store) for `taskctl init`.
pub async fn open_for_init(global: &GlobalArgs) -> Result<(Store, bool)> {
    let (options, env_endpoint) = options(global);
    Ok(taskfleet::connect::open_for_init(&options, env_endpoint).await?)
}

/// An EC2 client for `global` (an explicit `--ec2-endpoint-url` or
/// `--region` beats the environment).
pub async fn ec2(global: &GlobalArgs) -> Result<aws_sdk_ec2::Client> {
    let options = Ec2Options {
        endpoint_url: global.ec2_endpoint_url.clone(),
        region: global.region.clone(),
        caller: Caller::Operator,
    };
    Ok(taskfleet::connect::ec2(&options).await?)
}

/// An S3 client for `global` and an explicit endpoint, if given (which
/// beats the environment's).
pub async fn s3(global: &GlobalArgs, endpoint_url: Option<&str>) -> aws_sdk_s3::Client {
    // An emulator or a custom endpoint has no per-bucket host names.
    let path_style = endpoint_url.is_some()
        || std::env::var_os("AWS_ENDPOINT_URL_S3").is_some()
        || std::env::var_os("AWS_ENDPOINT_URL").is_some();
    taskfleet::connect::s3(&S3Options {
        endpoint_url: endpoint_url.map(str::to_owned),
        region: global.region.clone(),
        path_style,
        caller: Caller::Operator,
    })
    .await
}

/// The stored step `step`, or the error that says how to see the steps.
pub async fn step(store: &Store, step: &str) -> Result<taskfleet::model::StepMeta> {
    use taskfleet::store::TaskStore as _;
    match store.step(step).await? {
        Some(meta) => Ok(meta),
        None => anyhow::bail!(
            "there is no step '{step}' in {}; `taskctl status` lists the steps",
            store.describe()
        ),
    }
}
