//! The instances of a table's steps, found by their tags, and terminating
//! them.
//!
//! Guarantees: only instances tagged with the table (and the step, when
//! one is given) are listed or terminated; `DescribeInstances` is filtered
//! by tag and state on EC2's side and read page by page.

use aws_sdk_ec2::Client;
use aws_sdk_ec2::types::{Filter, Instance, InstanceLifecycleType};
use serde::Serialize;

use super::{FleetError, TAG_DRAIN, TAG_FIRST_PLACE, TAG_LAUNCH, TAG_STEP, TAG_TABLE, classify};

/// States of an instance that is, or may soon be, working.
pub const ACTIVE_STATES: &[&str] = &["pending", "running"];
/// States of an instance that is not yet gone.
pub const LIVE_STATES: &[&str] = &["pending", "running", "stopping", "stopped"];

/// One worker instance.
#[derive(Debug, Clone, Serialize)]
pub struct FleetInstance {
    /// The instance id (also the host part of its workers' owner names).
    pub instance_id: String,
    /// The step it works for.
    pub step: String,
    /// Its instance type.
    pub instance_type: String,
    /// Spot or on-demand.
    pub spot: bool,
    /// Its EC2 state (`pending`, `running`, ...).
    pub state: String,
    /// When it was launched, seconds since the epoch.
    pub launched_at: Option<i64>,
    /// The launch that started it.
    pub launch_id: Option<String>,
    /// Its place among the step's instances ([`TAG_FIRST_PLACE`] plus its
    /// `ami-launch-index`), where its agent started looking for tasks.
    pub place: Option<u32>,
}

/// An instance's place ([`super::place`]), if EC2 gave its launch index.
fn place_of(instance: &Instance) -> Option<u32> {
    let index = u32::try_from(instance.ami_launch_index()?).ok()?;
    Some(super::place(
        tag(instance, TAG_FIRST_PLACE).as_deref(),
        index,
    ))
}

fn tag(instance: &Instance, key: &str) -> Option<String> {
    instance
        .tags()
        .iter()
        .find(|t| t.key() == Some(key))
        .and_then(|t| t.value().map(ToOwned::to_owned))
}

/// The instances of `table` (of `step` only, if given) in one of `states`.
pub async fn list(
    client: &Client,
    table: &str,
    step: Option<&str>,
    states: &[&str],
) -> Result<Vec<FleetInstance>, FleetError> {
    let mut call = client
        .describe_instances()
        .filters(
            Filter::builder()
                .name(format!("tag:{TAG_TABLE}"))
                .values(table)
                .build(),
        )
        .filters(
            Filter::builder()
                .name("instance-state-name")
                .set_values(Some(states.iter().map(|s| (*s).to_owned()).collect()))
                .build(),
        );
    if let Some(step) = step {
        call = call.filters(
            Filter::builder()
                .name(format!("tag:{TAG_STEP}"))
                .values(step)
                .build(),
        );
    }
    let pages: Vec<_> = call
        .into_paginator()
        .send()
        .collect::<Result<Vec<_>, _>>()
        .await
        .map_err(|e| classify("DescribeInstances", &e))?;
    let mut out: Vec<FleetInstance> = pages
        .iter()
        .flat_map(aws_sdk_ec2::operation::describe_instances::DescribeInstancesOutput::reservations)
        .flat_map(aws_sdk_ec2::types::Reservation::instances)
        .filter_map(|i| {
            Some(FleetInstance {
                instance_id: i.instance_id()?.to_owned(),
                step: tag(i, TAG_STEP)?,
                instance_type: i
                    .instance_type()
                    .map_or_else(|| "-".to_owned(), |t| t.as_str().to_owned()),
                spot: i.instance_lifecycle() == Some(&InstanceLifecycleType::Spot),
                state: i
                    .state()
                    .and_then(|s| s.name())
                    .map_or_else(|| "-".to_owned(), |s| s.as_str().to_owned()),
                launched_at: i.launch_time().map(aws_smithy_types::DateTime::secs),
                launch_id: tag(i, TAG_LAUNCH),
                place: place_of(i),
            })
        })
        .collect();
    out.sort_by(|a, b| {
        (&a.step, a.launched_at, &a.instance_id).cmp(&(&b.step, b.launched_at, &b.instance_id))
    });
    Ok(out)
}

/// Asks the agents of `ids` to drain: tags them [`TAG_DRAIN`] (with the
/// time), which each agent reads from its instance metadata.
pub async fn drain(client: &Client, ids: &[String]) -> Result<(), FleetError> {
    let now = crate::time::Timestamp::now().to_string();
    for chunk in ids.chunks(1000) {
        client
            .create_tags()
            .set_resources(Some(chunk.to_vec()))
            .tags(
                aws_sdk_ec2::types::Tag::builder()
                    .key(TAG_DRAIN)
                    .value(&now)
                    .build(),
            )
            .send()
            .await
            .map_err(|e| classify("CreateTags", &e))?;
    }
    Ok(())
}

/// Terminates `ids` (nothing when empty).
pub async fn terminate(client: &Client, ids: &[String]) -> Result<(), FleetError> {
    // TerminateInstances takes at most 1,000 ids a call.
    for chunk in ids.chunks(1000) {
        client
            .terminate_instances()
            .set_instance_ids(Some(chunk.to_vec()))
            .send()
            .await
            .map_err(|e| classify("TerminateInstances", &e))?;
    }
    Ok(())
}
