//! Launching workers: how many a launch may start, and starting them with
//! one `RunInstances` from the step's launch template.
//!
//! Guarantees:
//!
//! - [`plan`] never allows more instances than asked for, than the step's
//!   claimable tasks can keep busy (claimable ÷ slots, rounded up), or
//!   than `--max-instances` leaves room for beside the step's pending and
//!   running instances; it says which limit decided.
//! - [`run_instances`] asks for exactly the planned number (`MinCount` =
//!   `MaxCount`): EC2 starts all of them or none.
//! - The `ClientToken` is derived from the table, step and launch id, so
//!   sending the same launch again (the SDK's own retries, or the command
//!   run again with the same `--launch-id`) returns the instances of the
//!   first send instead of starting more.
//! - Every instance is tagged with its table, step, launch id and slots,
//!   and `Name` = step.

use aws_sdk_ec2::Client;
use aws_sdk_ec2::types::{
    InstanceMarketOptionsRequest, InstanceType, LaunchTemplateSpecification, MarketType,
    ResourceType, SpotMarketOptions, Tag, TagSpecification,
};
use serde::Serialize;
use sha2::{Digest, Sha256};

use super::{
    FleetError, TAG_FIRST_PLACE, TAG_LAUNCH, TAG_NAME, TAG_SLOTS, TAG_STEP, TAG_TABLE,
    TAG_TEMPLATE, TAG_TEMPLATE_VERSION, classify, error_code,
};

/// What bounds a launch.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct Bounds {
    /// `--count`.
    pub requested: u32,
    /// Claimable (pending) tasks of the step.
    pub claimable: u64,
    /// Tasks each instance's agent runs at once.
    pub slots: u32,
    /// `--max-instances`, if given.
    pub max_instances: Option<u32>,
    /// The step's instances already pending or running.
    pub active: u32,
}

/// How many instances to start, and why.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Plan {
    /// Instances to start.
    pub count: u32,
    /// The limits that made `count` smaller than asked, as sentences.
    pub reasons: Vec<String>,
}

/// How many of `bounds.requested` instances a launch may start.
pub fn plan(bounds: &Bounds) -> Plan {
    let mut count = bounds.requested;
    let mut reasons = Vec::new();
    let slots = u64::from(bounds.slots.max(1));
    let usable = u32::try_from(bounds.claimable.div_ceil(slots)).unwrap_or(u32::MAX);
    if usable < count {
        count = usable;
        reasons.push(format!(
            "the step has {} claimable task{} and each instance runs {} at a time, so it can use {usable}",
            bounds.claimable,
            plural(bounds.claimable),
            bounds.slots.max(1),
        ));
    }
    if let Some(max) = bounds.max_instances {
        let room = max.saturating_sub(bounds.active);
        if room < count {
            count = room;
            reasons.push(format!(
                "--max-instances {max} with {} instance{} of the step already pending or running leaves room for {room}",
                bounds.active,
                plural(u64::from(bounds.active)),
            ));
        }
    }
    Plan { count, reasons }
}

fn plural(n: u64) -> &'static str {
    if n == 1 { "" } else { "s" }
}

/// Buying spot capacity.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct Spot {
    /// The highest hourly price to pay (default: the on-demand price).
    pub max_price: Option<String>,
}

/// One `RunInstances`.
#[derive(Debug, Clone, Serialize)]
pub struct LaunchRequest {
    /// The task table's name.
    pub table: String,
    /// The step.
    pub step: String,
    /// The launch template's name.
    pub template: String,
    /// `$Latest`, `$Default` or a version number.
    pub template_version: String,
    /// Instances to start.
    pub count: u32,
    /// The launch id, on every instance's tags.
    pub launch_id: String,
    /// Tasks each instance's agent runs at once (tagged for the agent).
    pub slots: u32,
    /// Spot instead of on-demand.
    pub spot: Option<Spot>,
    /// Instead of the template's instance type.
    pub instance_type: Option<String>,
    /// The subnet to start in (else the template's, else the default VPC's).
    pub subnet: Option<String>,
    /// Instead of the template's security groups.
    pub security_groups: Vec<String>,
    /// The place of the launch's first instance among the step's
    /// instances ([`TAG_FIRST_PLACE`], from [`next_place`]).
    pub first_place: u32,
}

/// The first place a new launch of the step takes: past the highest place
/// of the step's instances already pending or running (0 when there are
/// none), so that no two live instances share a place.
pub fn next_place(active: &[super::instances::FleetInstance]) -> u32 {
    active
        .iter()
        .filter_map(|i| i.place)
        .max()
        .map_or(0, |p| p.saturating_add(1))
}

impl LaunchRequest {
    /// The tags each instance gets, in order.
    pub fn tags(&self) -> Vec<(&'static str, String)> {
        vec![
            (TAG_NAME, self.step.clone()),
            (TAG_TABLE, self.table.clone()),
            (TAG_STEP, self.step.clone()),
            (TAG_LAUNCH, self.launch_id.clone()),
            (TAG_SLOTS, self.slots.to_string()),
            (TAG_TEMPLATE, self.template.clone()),
            (TAG_TEMPLATE_VERSION, self.template_version.clone()),
            (TAG_FIRST_PLACE, self.first_place.to_string()),
        ]
    }

    /// The idempotency token: the same table, step and launch id give the
    /// same token (EC2 allows 64 ASCII characters).
    pub fn client_token(&self) -> String {
        let digest = Sha256::digest(format!("{}\n{}\n{}", self.table, self.step, self.launch_id));
        let hex = super::hex(&digest);
        format!("taskfleet-{}", &hex[..48])
    }
}

/// Starts `request.count` instances; returns their ids.
pub async fn run_instances(
    client: &Client,
    request: &LaunchRequest,
) -> Result<Vec<String>, FleetError> {
    let count = i32::try_from(request.count).unwrap_or(i32::MAX);
    let mut call = client
        .run_instances()
        .launch_template(
            LaunchTemplateSpecification::builder()
                .launch_template_name(&request.template)
                .version(&request.template_version)
                .build(),
        )
        .min_count(count)
        .max_count(count)
        .client_token(request.client_token())
        .set_instance_type(request.instance_type.as_deref().map(InstanceType::from))
        .set_subnet_id(request.subnet.clone())
        .tag_specifications(
            TagSpecification::builder()
                .resource_type(ResourceType::Instance)
                .set_tags(Some(
                    request
                        .tags()
                        .into_iter()
                        .map(|(k, v)| Tag::builder().key(k).value(v).build())
                        .collect(),
                ))
                .build(),
        );
    if !request.security_groups.is_empty() {
        call = call.set_security_group_ids(Some(request.security_groups.clone()));
    }
    if let Some(spot) = &request.spot {
        call = call.instance_market_options(
            InstanceMarketOptionsRequest::builder()
                .market_type(MarketType::Spot)
                .spot_options(
                    SpotMarketOptions::builder()
                        .set_max_price(spot.max_price.clone())
                        .build(),
                )
                .build(),
        );
    }
    match call.send().await {
        Ok(out) => Ok(out
            .instances()
            .iter()
            .filter_map(|i| i.instance_id().map(ToOwned::to_owned))
            .collect()),
        Err(e) => {
            let instance_type = request
                .instance_type
                .clone()
                .unwrap_or_else(|| "the template's instance type".to_owned());
            Err(match error_code(&e) {
                Some(code) if code.starts_with("InvalidLaunchTemplateName.NotFound") => {
                    FleetError::TemplateNotFound {
                        template: request.template.clone(),
                        step: request.step.clone(),
                    }
                }
                Some("InsufficientInstanceCapacity") => {
                    FleetError::InsufficientCapacity { instance_type }
                }
                Some("VcpuLimitExceeded") => FleetError::VcpuLimit { instance_type },
                Some("IdempotentParameterMismatch") => FleetError::LaunchIdReused {
                    launch_id: request.launch_id.clone(),
                },
                _ => classify("RunInstances", &e),
            })
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn bounds(requested: u32, claimable: u64, slots: u32) -> Bounds {
        Bounds {
            requested,
            claimable,
            slots,
            max_instances: None,
            active: 0,
        }
    }

    #[test]
    fn a_launch_is_capped_at_what_the_claimable_tasks_can_use() {
        let p = plan(&bounds(5, 3, 1));
        assert_eq!(p.count, 3);
        assert!(p.reasons[0].contains("3 claimable tasks"), "{p:?}");
        assert_eq!(plan(&bounds(5, 3, 2)).count, 2, "rounded up");
        assert_eq!(
            plan(&bounds(2, 100, 4)),
            Plan {
                count: 2,
                reasons: vec![]
            }
        );
        assert_eq!(plan(&bounds(5, 0, 1)).count, 0);
    }

    #[test]
    fn max_instances_counts_the_steps_active_instances() {
        let mut b = bounds(5, 30, 1);
        b.max_instances = Some(4);
        b.active = 3;
        let p = plan(&b);
        assert_eq!(p.count, 1);
        assert!(p.reasons[0].contains("leaves room for 1"), "{p:?}");
        b.active = 6;
        assert_eq!(plan(&b).count, 0);
    }

    fn instance(place: Option<u32>) -> super::super::instances::FleetInstance {
        super::super::instances::FleetInstance {
            instance_id: "i-1".into(),
            step: "align".into(),
            instance_type: "c6i.large".into(),
            spot: false,
            state: "running".into(),
            launched_at: None,
            launch_id: None,
            place,
        }
    }

    #[test]
    fn a_launch_takes_the_places_past_the_highest_of_the_live_instances() {
        assert_eq!(next_place(&[]), 0);
        assert_eq!(next_place(&[instance(Some(0)), instance(Some(1))]), 2);
        // One of an earlier launch's gone: still no place shared.
        assert_eq!(next_place(&[instance(Some(3)), instance(Some(1))]), 4);
        assert_eq!(next_place(&[instance(None)]), 0);
    }

    #[test]
    fn the_client_token_depends_on_the_launch_id_and_fits_ec2s_limit() {
        let mut r = LaunchRequest {
            table: "t".into(),
            step: "align".into(),
            template: "align".into(),
            template_version: "$Latest".into(),
            count: 1,
            launch_id: "a".into(),
            slots: 1,
            spot: None,
            instance_type: None,
            subnet: None,
            security_groups: vec![],
            first_place: 0,
        };
        let first = r.client_token();
        assert_eq!(first, r.client_token());
        assert!(first.len() <= 64);
        r.launch_id = "b".into();
        assert_ne!(first, r.client_token());
    }
}
