//! The agent on EC2: who it is, from the instance metadata service
//! (IMDSv2, session tokens with a TTL, refreshed by the SDK's client), and
//! what EC2 tells the instance while it runs.
//!
//! - The instance id names the agent in the table (owner `INSTANCE/WORKER`)
//!   and, with type, AMI and lifecycle, each attempt's provenance.
//! - A spot interruption notice (`spot/instance-action`) stops the agent at
//!   once: its scripts are stopped and their tasks released as class
//!   `spot`, without using an attempt.
//! - A rebalance recommendation, or the drain tag `taskctl stop` sets on
//!   the instance (`tags/instance/taskfleet:drain`), makes it stop
//!   claiming; running tasks go on within the grace period.
//! - With `--terminate-on-exit` (as the bootstrap runs it), whatever ends
//!   the agent ends the instance: [`end_instance`] calls TerminateInstances
//!   on the instance itself and, if that fails, runs the power-off command
//!   (`shutdown -h now`; the launch templates make a shutdown terminate).
//!
//! Metadata that cannot be read is the host's trouble, never a task's: the
//! agent does not start (exit code 5).

use std::time::Duration;

use aws_config::imds::client::Client;
use aws_config::imds::client::error::ImdsError;

use crate::shutdown::Shutdown;

/// What the agent knows of its instance.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Instance {
    /// `i-...`.
    pub id: String,
    /// The region it runs in.
    pub region: String,
    /// Its instance type.
    pub instance_type: String,
    /// The AMI it booted from.
    pub ami: String,
    /// Spot (`true`) or on-demand.
    pub spot: bool,
    /// The launch template and version it was started from, from the tags
    /// `taskctl launch` sets; `None` for an instance started otherwise.
    pub template: Option<(String, String)>,
    /// Its place among the step's instances: its launch's first place
    /// (the tag `taskfleet:first-place` that `taskctl launch` sets, 0
    /// without it) plus its place in the launch (`ami-launch-index`: 0, 1,
    /// ...), if the metadata service says.
    pub launch_index: Option<u32>,
}

impl Instance {
    /// One line for an attempt's provenance.
    pub fn describe(&self) -> String {
        let template = self
            .template
            .as_ref()
            .map(|(name, version)| format!(", template {name} version {version}"))
            .unwrap_or_default();
        format!(
            "{} ({}, {}, {}, {}{template})",
            self.id,
            self.instance_type,
            self.ami,
            if self.spot { "spot" } else { "on-demand" },
            self.region
        )
    }
}

/// The instance metadata service.
#[derive(Debug, Clone)]
pub struct Metadata {
    client: Client,
}

impl Metadata {
    /// A client of the metadata service at `endpoint`, or where the SDK's
    /// configuration says (`AWS_EC2_METADATA_SERVICE_ENDPOINT`, else the
    /// link-local address).
    pub fn new(endpoint: Option<&str>) -> Result<Self, String> {
        let mut builder = Client::builder().token_ttl(Duration::from_secs(6 * 3600));
        if let Some(url) = endpoint {
            builder = builder
                .endpoint(url)
                .map_err(|e| format!("--imds-endpoint {url}: {e}"))?;
        }
        Ok(Self {
            client: builder.build(),
        })
    }

    async fn read(&self, path: &str) -> Result<String, String> {
        self.client
            .get(format!("/latest/meta-data/{path}"))
            .await
            .map(String::from)
            .map_err(|e| format!("cannot read {path} from the instance metadata service: {e}"))
    }

    /// A path that answers 404 until EC2 has something to say.
    async fn notice(&self, path: &str) -> Result<Option<String>, String> {
        match self.client.get(format!("/latest/meta-data/{path}")).await {
            Ok(text) => Ok(Some(String::from(text))),
            Err(ImdsError::ErrorResponse(r)) if r.response().status().as_u16() == 404 => Ok(None),
            Err(e) => Err(format!("cannot read {path}: {e}")),
        }
    }

    /// Who this instance is.
    pub async fn instance(&self) -> Result<Instance, String> {
        Ok(Instance {
            id: self.read("instance-id").await?,
            region: self.read("placement/region").await?,
            instance_type: self.read("instance-type").await?,
            ami: self.read("ami-id").await?,
            spot: self.read("instance-life-cycle").await? == "spot",
            template: match (
                self.notice(&format!("tags/instance/{}", taskfleet::fleet::TAG_TEMPLATE))
                    .await?,
                self.notice(&format!(
                    "tags/instance/{}",
                    taskfleet::fleet::TAG_TEMPLATE_VERSION
                ))
                .await?,
            ) {
                (Some(name), Some(version)) => Some((name, version)),
                _ => None,
            },
            // Only where the agent starts looking for tasks: not worth
            // stopping for.
            launch_index: self.place().await,
        })
    }

    /// The instance's place among the step's instances (see
    /// [`Instance::launch_index`]); only where the agent starts looking.
    async fn place(&self) -> Option<u32> {
        let index: u32 = self
            .notice("ami-launch-index")
            .await
            .ok()
            .flatten()?
            .trim()
            .parse()
            .ok()?;
        let first = self
            .notice(&format!(
                "tags/instance/{}",
                taskfleet::fleet::TAG_FIRST_PLACE
            ))
            .await
            .ok()
            .flatten();
        Some(taskfleet::fleet::place(first.as_deref(), index))
    }
}

/// Polls for a spot interruption notice, a rebalance recommendation and
/// the drain tag every `every` until the agent stops. A notice stops the
/// agent now, its tasks released as class `spot`; a recommendation or the
/// drain tag stops claiming.
/// Errors reading the notices are logged and polled again: the notice
/// comes two minutes ahead, there is time for a few tries.
pub async fn watch(metadata: Metadata, shutdown: Shutdown, every: Duration) {
    let mut rebalancing = false;
    loop {
        tokio::select! {
            // The agent is stopping now anyway.
            () = shutdown.immediate() => return,
            () = tokio::time::sleep(every) => {}
        }
        match metadata.notice("spot/instance-action").await {
            Ok(Some(notice)) => {
                tracing::warn!(%notice, "spot interruption notice; releasing tasks and stopping");
                shutdown.spot_interruption();
                return;
            }
            Ok(None) => {}
            Err(e) => tracing::warn!(error = %e, "cannot read the spot interruption notice"),
        }
        if rebalancing {
            continue;
        }
        if let Ok(Some(notice)) = metadata.notice("events/recommendations/rebalance").await {
            tracing::warn!(%notice, "rebalance recommendation; claiming nothing more");
            rebalancing = true;
            shutdown.stop();
        } else if let Ok(Some(when)) = metadata
            .notice(&format!("tags/instance/{}", taskfleet::fleet::TAG_DRAIN))
            .await
        {
            tracing::warn!(%when, "drain asked for (taskctl stop); claiming nothing more");
            rebalancing = true;
            shutdown.stop();
        }
    }
}

/// How the agent ends its instance when it exits.
#[derive(Debug, Clone)]
pub struct Ending {
    /// The command that powers the host off when TerminateInstances
    /// fails (program and arguments).
    pub poweroff: Vec<String>,
    /// Longest wait for TerminateInstances.
    pub deadline: Duration,
}

/// Ends this instance: TerminateInstances on itself (with the instance's
/// own credentials, in its region; `AWS_ENDPOINT_URL_EC2` is honoured),
/// and when that fails or `instance` is unknown (its metadata could not be
/// read), the power-off command. Returns what was done, for the log.
pub async fn end_instance(instance: Option<&Instance>, ending: &Ending) -> String {
    let mut why = String::from("the instance's id is unknown");
    if let Some(instance) = instance {
        let options = taskfleet::connect::Ec2Options {
            endpoint_url: None,
            region: Some(instance.region.clone()),
            caller: taskfleet::iam::Caller::Agent,
        };
        let attempt = async {
            let client = taskfleet::connect::ec2(&options)
                .await
                .map_err(|e| e.to_string())?;
            taskfleet::fleet::instances::terminate(&client, std::slice::from_ref(&instance.id))
                .await
                .map_err(|e| e.to_string())
        };
        match tokio::time::timeout(ending.deadline, attempt).await {
            Ok(Ok(())) => return format!("terminated instance {}", instance.id),
            Ok(Err(e)) => why = e,
            Err(_) => why = format!("no answer within {:?}", ending.deadline),
        }
        tracing::error!(error = %why, "cannot terminate this instance; powering off instead");
    }
    let Some((program, args)) = ending.poweroff.split_first() else {
        return format!("cannot end this instance ({why}) and no power-off command is set");
    };
    match tokio::process::Command::new(program)
        .args(args)
        .status()
        .await
    {
        Ok(status) if status.success() => {
            format!("powered off with `{}` ({why})", ending.poweroff.join(" "))
        }
        Ok(status) => format!(
            "`{}` failed ({status}) after TerminateInstances did not work ({why})",
            ending.poweroff.join(" ")
        ),
        Err(e) => format!(
            "cannot run `{}` ({e}) after TerminateInstances did not work ({why})",
            ending.poweroff.join(" ")
        ),
    }
}
