//! Configuration read once at the edge: flags and environment into
//! [`AwsOptions`], handed to [`taskfleet::connect`].

use anyhow::Result;
use taskfleet::connect::{AwsOptions, Ec2Options};
use taskfleet::store::Store;

use crate::cli::GlobalArgs;

fn options(global: &GlobalArgs) -> (AwsOptions, Option<String>) {
    let options = AwsOptions {
        table: global.table.clone(),
        endpoint_url: global.endpoint_url.clone(),
        region: global.region.clone(),
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
    };
    Ok(taskfleet::connect::ec2(&options).await?)
}
