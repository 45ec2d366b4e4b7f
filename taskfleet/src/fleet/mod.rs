//! The EC2 fleet: launch templates per step, launching workers from them,
//! and finding and terminating the instances of a step.
//!
//! What it guarantees:
//!
//! - **One naming rule.** A step's launch template name comes from one
//!   [`TemplateNaming`] (`{step}` by default, e.g. `taskfleet-{step}`);
//!   applying a template and launching from it use the same rule, so
//!   they cannot disagree about which template a step has.
//! - **A template changes only when its file does.** Each version carries
//!   a digest of what it was made from (the file with its variables
//!   filled in, and the user-data); applying an unchanged file creates no
//!   version, a changed one adds a version and makes it the default.
//! - **Launches are bounded and findable.** A launch never starts more
//!   instances than the step can use (see [`launch::plan`]), and every
//!   instance carries tags naming its table, step and launch
//!   ([`TAG_TABLE`], [`TAG_STEP`], [`TAG_LAUNCH`]); the fleet is found by
//!   those tags, never by scanning every instance of the account.
//! - **EC2's refusals read as one sentence** ([`FleetError`]): a missing
//!   template, a missing permission, no capacity, the vCPU limit.
//!
//! # Layout
//!
//! - [`template`]: template files, their variables, and applying them.
//! - [`launch`]: how many instances a launch may start, and starting them.
//! - [`instances`]: the instances of a step, and terminating them.

pub mod instances;
pub mod launch;
pub mod template;

use aws_sdk_ec2::error::{ProvideErrorMetadata, SdkError};
use aws_smithy_types::error::display::DisplayErrorContext;

/// Tag naming the task table an instance works on.
pub const TAG_TABLE: &str = "taskfleet:table";
/// Tag naming the step an instance works for.
pub const TAG_STEP: &str = "taskfleet:step";
/// Tag naming the launch that started an instance.
pub const TAG_LAUNCH: &str = "taskfleet:launch-id";
/// Tag holding the tasks an instance's agent runs at once.
pub const TAG_SLOTS: &str = "taskfleet:slots";
/// Tag naming the launch template an instance was started from.
pub const TAG_TEMPLATE: &str = "taskfleet:template";
/// Tag holding the number of the template version it was started from
/// (`taskctl launch` resolves `$Default` and `$Latest` to it).
pub const TAG_TEMPLATE_VERSION: &str = "taskfleet:template-version";
/// Tag holding the place of a launch's first instance among the step's
/// instances: `taskctl launch` sets it past the places of those already
/// pending or running, and an instance's place is this plus its
/// `ami-launch-index`. The agent starts looking for tasks where its place
/// says (as `agent --launch-index`), so that the instances of several
/// launches start spread over the step like those of one.
pub const TAG_FIRST_PLACE: &str = "taskfleet:first-place";

/// An instance's place among its step's instances, from its
/// [`TAG_FIRST_PLACE`] tag (0 without one, or one that is not a number:
/// an instance launched some other way) and its `ami-launch-index`.
pub fn place(first_place_tag: Option<&str>, launch_index: u32) -> u32 {
    first_place_tag
        .and_then(|v| v.trim().parse::<u32>().ok())
        .unwrap_or(0)
        .saturating_add(launch_index)
}
/// The console's name tag: the step.
pub const TAG_NAME: &str = "Name";
/// Tag set by `taskctl stop` on instances to drain: their agents claim
/// nothing more, let running tasks finish within their grace period,
/// release the rest and terminate the instance. The agent reads it through
/// instance metadata (`tags/instance/taskfleet:drain`).
pub const TAG_DRAIN: &str = "taskfleet:drain";
/// Tag (usually from the launch template) naming the S3 bucket the
/// bootstrap downloads the agent from.
pub const TAG_AGENT_BUCKET: &str = "taskfleet:agent-bucket";
/// Tag (usually from the launch template) naming the agent version the
/// bootstrap installs, as published by `taskctl agent publish`.
pub const TAG_AGENT_VERSION: &str = "taskfleet:agent-version";
/// The S3 key prefix under which `taskctl agent publish` stores agent
/// binaries: `PREFIX/VERSION/agent` and `PREFIX/VERSION/agent.sha256`.
/// `userdata/bootstrap.sh` uses the same layout.
pub const AGENT_KEY_PREFIX: &str = "taskfleet/agent";

/// The default template naming pattern: the step's name.
pub const DEFAULT_TEMPLATE_NAME: &str = "{step}";

/// The rule that turns a step name into its launch template's name.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TemplateNaming {
    pattern: String,
}

impl TemplateNaming {
    /// A pattern holding `{step}` once, such as `taskfleet-{step}`.
    pub fn new(pattern: &str) -> Result<Self, FleetError> {
        if pattern.matches("{step}").count() != 1 {
            return Err(FleetError::NamePattern {
                pattern: pattern.to_owned(),
            });
        }
        Ok(Self {
            pattern: pattern.to_owned(),
        })
    }

    /// The template name of `step`, checked against EC2's rules (3 to 128
    /// letters, digits and `( ) . - / _`).
    pub fn name(&self, step: &str) -> Result<String, FleetError> {
        let name = self.pattern.replace("{step}", step);
        let valid = (3..=128).contains(&name.len())
            && name
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || "().-/_".contains(c));
        if valid {
            Ok(name)
        } else {
            Err(FleetError::TemplateName {
                name,
                step: step.to_owned(),
            })
        }
    }

    /// The pattern as given.
    pub fn pattern(&self) -> &str {
        &self.pattern
    }
}

impl Default for TemplateNaming {
    fn default() -> Self {
        Self {
            pattern: DEFAULT_TEMPLATE_NAME.to_owned(),
        }
    }
}

/// What went wrong with templates or the fleet, worded for the user.
#[derive(Debug, thiserror::Error)]
pub enum FleetError {
    /// The naming pattern does not name each step's template apart.
    #[error(
        "--template-name '{pattern}' must contain {{step}} exactly once, e.g. 'taskfleet-{{step}}'"
    )]
    NamePattern {
        /// The pattern given.
        pattern: String,
    },
    /// The step's template name breaks EC2's naming rules.
    #[error(
        "the launch template name '{name}' of step '{step}' is not valid for EC2 (3 to 128 letters, digits and ( ) . - / _); choose a --template-name pattern such as 'taskfleet-{{step}}'"
    )]
    TemplateName {
        /// The name the pattern gave.
        name: String,
        /// The step.
        step: String,
    },
    /// A template file cannot be read or is not a valid template.
    #[error("{path}: {message}")]
    TemplateFile {
        /// The file.
        path: String,
        /// What is wrong and what to do.
        message: String,
    },
    /// A template file uses variables nobody set.
    #[error(
        "{path} uses {}, which {} not set; give --var NAME=VALUE or set {} in the environment",
        names.iter().map(|n| format!("${{{n}}}")).collect::<Vec<_>>().join(", "),
        if names.len() == 1 { "is" } else { "are" },
        if names.len() == 1 { "it" } else { "them" }
    )]
    UnsetVariables {
        /// The file.
        path: String,
        /// The variables, in the order they first appear.
        names: Vec<String>,
    },
    /// No launch template has the step's template name.
    #[error(
        "there is no launch template '{template}' for step '{step}'; create it with `taskctl template apply --step {step}`"
    )]
    TemplateNotFound {
        /// The template name.
        template: String,
        /// The step.
        step: String,
    },
    /// The credentials may not do this.
    #[error(
        "EC2 refused {operation} for lack of permission ({message}); grant ec2:{operation} to these credentials or use a profile that has it"
    )]
    Unauthorized {
        /// The EC2 action.
        operation: &'static str,
        /// What EC2 said.
        message: String,
    },
    /// EC2 has no capacity for the instance type right now.
    #[error(
        "EC2 has no capacity for {instance_type} in that availability zone right now; try again later, or another --instance-type or --subnet"
    )]
    InsufficientCapacity {
        /// The instance type asked for.
        instance_type: String,
    },
    /// The account's vCPU quota is used up.
    #[error(
        "launching would exceed the account's vCPU limit for {instance_type} instances; launch fewer (--count), terminate instances you do not need, or ask AWS for a higher limit in Service Quotas"
    )]
    VcpuLimit {
        /// The instance type asked for.
        instance_type: String,
    },
    /// The launch id was used before, for a launch with other parameters.
    #[error(
        "launch id '{launch_id}' was already used for a different launch; give a new --launch-id, or none"
    )]
    LaunchIdReused {
        /// The launch id.
        launch_id: String,
    },
    /// Any other refusal or failure of EC2.
    #[error("EC2 {operation} failed: {message}")]
    Ec2 {
        /// The EC2 action.
        operation: &'static str,
        /// What EC2 (or the network) said.
        message: String,
    },
}

/// `bytes` as lower-case hex.
pub fn hex(bytes: &[u8]) -> String {
    use std::fmt::Write as _;
    bytes.iter().fold(String::new(), |mut out, b| {
        let _ = write!(out, "{b:02x}");
        out
    })
}

/// The EC2 error code of `err`, if EC2 answered with one.
fn error_code<E: ProvideErrorMetadata, R>(err: &SdkError<E, R>) -> Option<&str> {
    err.code()
}

/// `err` as a [`FleetError`] for errors every operation may meet.
fn classify<E, R>(operation: &'static str, err: &SdkError<E, R>) -> FleetError
where
    E: ProvideErrorMetadata + std::error::Error + 'static,
    R: std::fmt::Debug,
{
    let message = err
        .message()
        .map_or_else(|| DisplayErrorContext(err).to_string(), ToOwned::to_owned);
    match error_code(err) {
        Some("UnauthorizedOperation" | "AuthFailure") => {
            FleetError::Unauthorized { operation, message }
        }
        _ => FleetError::Ec2 { operation, message },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_default_names_a_template_after_its_step_and_a_pattern_adds_to_it() {
        assert_eq!(TemplateNaming::default().name("align").unwrap(), "align");
        let naming = TemplateNaming::new("taskfleet-{step}").unwrap();
        assert_eq!(naming.name("qc").unwrap(), "taskfleet-qc");
    }

    #[test]
    fn a_pattern_without_the_step_or_a_name_ec2_refuses_is_an_error() {
        let err = TemplateNaming::new("fleet").unwrap_err();
        assert!(err.to_string().contains("{step} exactly once"), "{err}");
        let err = TemplateNaming::default().name("qc").unwrap_err();
        assert!(err.to_string().contains("'taskfleet-{step}'"), "{err}");
    }
}
