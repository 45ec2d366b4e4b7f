//! Launch template files (`launch-templates/STEP.json`) and applying them.
//!
//! A file holds EC2's launch template data under EC2's own field names
//! (`ImageId`, `InstanceType`, `MetadataOptions`, ...) and, instead of the
//! user-data itself, `UserDataFile`: a file in the user-data directory
//! (`userdata/`), so every step shares one bootstrap. Any string may hold
//! `${NAME}` variables (an AMI, a security group, an instance profile),
//! filled in from [`Variables`]; a variable nobody set is an error naming
//! it, never an empty string, unless it gives a default
//! (`${NAME:-DEFAULT}`).
//!
//! Guarantees:
//!
//! - A file is refused, naming the field, unless the instances it starts
//!   require `IMDSv2` tokens with a hop limit of 1, expose their tags in
//!   instance metadata (the bootstrap reads its step from them) and
//!   terminate when they shut down (an idle worker ends its own bill).
//! - Unknown fields are refused, so a misspelt field is not silently
//!   dropped.
//! - [`apply`] creates the template when it is missing, adds a version and
//!   makes it the default only when the rendered template differs from
//!   the default version's, and with `dry_run` only reads.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use aws_sdk_ec2::Client;
use aws_sdk_ec2::types::{
    InstanceType, LaunchTemplateBlockDeviceMappingRequest, LaunchTemplateEbsBlockDeviceRequest,
    LaunchTemplateHttpTokensState, LaunchTemplateIamInstanceProfileSpecificationRequest,
    LaunchTemplateInstanceMetadataEndpointState, LaunchTemplateInstanceMetadataOptionsRequest,
    LaunchTemplateInstanceMetadataTagsState, LaunchTemplateTagSpecificationRequest,
    RequestLaunchTemplateData, ResourceType, ShutdownBehavior, Tag, VolumeType,
};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use super::{FleetError, TemplateNaming, classify, error_code};

/// Starts every version description this tool writes; the digest follows.
pub const DIGEST_PREFIX: &str = "taskfleet sha256:";

/// Values for `${NAME}` variables: given ones first, then the environment
/// the caller captured.
#[derive(Debug, Clone, Default)]
pub struct Variables {
    /// `--var NAME=VALUE`.
    pub given: BTreeMap<String, String>,
    /// The environment, read at the binary's edge.
    pub environment: BTreeMap<String, String>,
}

impl Variables {
    fn get(&self, name: &str) -> Option<&str> {
        self.given
            .get(name)
            .or_else(|| self.environment.get(name))
            .map(String::as_str)
    }
}

/// Where template files and user-data live.
#[derive(Debug, Clone)]
pub struct TemplateDirs {
    /// `launch-templates/`: one `STEP.json` per step.
    pub templates: PathBuf,
    /// `userdata/`: the scripts `UserDataFile` names.
    pub userdata: PathBuf,
}

impl TemplateDirs {
    /// The file of `step`.
    pub fn file(&self, step: &str) -> PathBuf {
        self.templates.join(format!("{step}.json"))
    }

    /// The steps that have a file, sorted.
    pub fn steps(&self) -> Result<Vec<String>, FleetError> {
        let entries = std::fs::read_dir(&self.templates).map_err(|e| FleetError::TemplateFile {
            path: self.templates.display().to_string(),
            message: format!("cannot list the launch template files ({e}); give --templates-dir"),
        })?;
        let mut steps: Vec<String> = entries
            .flatten()
            .filter_map(|e| {
                let path = e.path();
                (path.extension()? == "json")
                    .then(|| path.file_stem()?.to_str().map(ToOwned::to_owned))?
            })
            .collect();
        steps.sort();
        Ok(steps)
    }
}

/// A template file as written.
#[derive(Debug, Deserialize)]
#[serde(rename_all = "PascalCase", deny_unknown_fields)]
struct TemplateFile {
    user_data_file: String,
    image_id: String,
    instance_type: Option<String>,
    key_name: Option<String>,
    iam_instance_profile: Option<Profile>,
    security_group_ids: Option<Vec<String>>,
    block_device_mappings: Option<Vec<BlockDevice>>,
    metadata_options: Option<MetadataOptions>,
    instance_initiated_shutdown_behavior: Option<String>,
    tag_specifications: Option<Vec<TagSpecification>>,
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "PascalCase", deny_unknown_fields)]
struct Profile {
    name: Option<String>,
    arn: Option<String>,
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "PascalCase", deny_unknown_fields)]
struct BlockDevice {
    device_name: String,
    ebs: Ebs,
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "PascalCase", deny_unknown_fields)]
struct Ebs {
    volume_size: Option<i32>,
    volume_type: Option<String>,
    delete_on_termination: Option<bool>,
    encrypted: Option<bool>,
    iops: Option<i32>,
    throughput: Option<i32>,
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "PascalCase", deny_unknown_fields)]
struct MetadataOptions {
    http_endpoint: Option<String>,
    http_tokens: Option<String>,
    http_put_response_hop_limit: Option<i32>,
    instance_metadata_tags: Option<String>,
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "PascalCase", deny_unknown_fields)]
struct TagSpecification {
    resource_type: String,
    tags: Vec<TagValue>,
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "PascalCase", deny_unknown_fields)]
struct TagValue {
    key: String,
    value: String,
}

/// A step's template, read, filled in and checked: what EC2 is sent.
#[derive(Debug, Clone)]
pub struct Rendered {
    /// The step.
    pub step: String,
    /// The launch template name (from the naming rule).
    pub name: String,
    /// The file it came from.
    pub path: PathBuf,
    /// The user-data script, as text.
    pub user_data: String,
    /// The digest of the filled-in file and the user-data.
    pub digest: String,
    /// The launch template data.
    pub data: RequestLaunchTemplateData,
}

impl Rendered {
    /// The version description recording [`Rendered::digest`].
    pub fn description(&self) -> String {
        format!("{DIGEST_PREFIX}{}", self.digest)
    }
}

/// Reads `step`'s file from `dirs`, fills in its variables and checks it.
pub fn render(
    dirs: &TemplateDirs,
    step: &str,
    naming: &TemplateNaming,
    vars: &Variables,
) -> Result<Rendered, FleetError> {
    if !crate::schema::is_valid_step_name(step) {
        return Err(FleetError::TemplateFile {
            path: dirs.templates.display().to_string(),
            message: format!(
                "'{step}' is not a step name (a letter, then letters, digits, '-', '_'); name the file STEP.json"
            ),
        });
    }
    let path = dirs.file(step);
    let shown = path.display().to_string();
    let bad = |message: String| FleetError::TemplateFile {
        path: shown.clone(),
        message,
    };
    let text = std::fs::read_to_string(&path).map_err(|e| {
        bad(format!(
            "cannot read the launch template file of step '{step}' ({e}); write it, or give --templates-dir"
        ))
    })?;
    let mut value: serde_json::Value =
        serde_json::from_str(&text).map_err(|e| bad(format!("not valid JSON: {e}")))?;
    let mut unset = Vec::new();
    fill(&mut value, vars, &mut unset);
    if !unset.is_empty() {
        return Err(FleetError::UnsetVariables {
            path: shown,
            names: unset,
        });
    }
    let file: TemplateFile = serde_json::from_value(value.clone())
        .map_err(|e| bad(format!("not a launch template: {e}")))?;
    check(&file).map_err(bad)?;
    let user_data_path = user_data_path(&dirs.userdata, &file.user_data_file).map_err(bad)?;
    let user_data = std::fs::read_to_string(&user_data_path).map_err(|e| {
        bad(format!(
            "cannot read its UserDataFile {} ({e}); give --userdata-dir",
            user_data_path.display()
        ))
    })?;
    let mut hasher = Sha256::new();
    hasher.update(value.to_string().as_bytes());
    hasher.update([0]);
    hasher.update(user_data.as_bytes());
    let digest = super::hex(&hasher.finalize());
    Ok(Rendered {
        step: step.to_owned(),
        name: naming.name(step)?,
        path,
        data: to_request(&file, &user_data),
        user_data,
        digest,
    })
}

/// Replaces `${NAME}` in every string of `value`; collects unset names.
fn fill(value: &mut serde_json::Value, vars: &Variables, unset: &mut Vec<String>) {
    match value {
        serde_json::Value::String(s) => *s = substitute(s, vars, unset),
        serde_json::Value::Array(items) => {
            for item in items {
                fill(item, vars, unset);
            }
        }
        serde_json::Value::Object(map) => {
            for item in map.values_mut() {
                fill(item, vars, unset);
            }
        }
        _ => {}
    }
}

fn substitute(text: &str, vars: &Variables, unset: &mut Vec<String>) -> String {
    let mut out = String::with_capacity(text.len());
    let mut rest = text;
    while let Some(start) = rest.find("${") {
        out.push_str(&rest[..start]);
        let after = &rest[start + 2..];
        let Some(end) = after.find('}') else {
            out.push_str(&rest[start..]);
            return out;
        };
        // `${NAME:-DEFAULT}`: DEFAULT when NAME is unset, as in the shell.
        let (name, default) = match after[..end].split_once(":-") {
            Some((name, default)) => (name, Some(default)),
            None => (&after[..end], None),
        };
        if let Some(value) = vars.get(name) {
            out.push_str(value);
        } else if let Some(default) = default {
            out.push_str(default);
        } else if !unset.iter().any(|n| n == name) {
            unset.push(name.to_owned());
        }
        rest = &after[end + 1..];
    }
    out.push_str(rest);
    out
}

/// The settings every worker instance relies on.
fn check(file: &TemplateFile) -> Result<(), String> {
    let metadata = file.metadata_options.as_ref();
    let field = |get: fn(&MetadataOptions) -> Option<String>| metadata.and_then(get);
    let rules: [(&str, Option<String>, &str); 4] = [
        (
            "MetadataOptions.HttpTokens",
            field(|m| m.http_tokens.clone()),
            "required",
        ),
        (
            "MetadataOptions.HttpPutResponseHopLimit",
            field(|m| m.http_put_response_hop_limit.map(|n| n.to_string())),
            "1",
        ),
        (
            "MetadataOptions.InstanceMetadataTags",
            field(|m| m.instance_metadata_tags.clone()),
            "enabled",
        ),
        (
            "InstanceInitiatedShutdownBehavior",
            file.instance_initiated_shutdown_behavior.clone(),
            "terminate",
        ),
    ];
    for (name, value, wanted) in rules {
        if value.as_deref() != Some(wanted) {
            return Err(format!(
                "{name} must be \"{wanted}\" (workers require IMDSv2, read their tags from instance metadata and end their bill by shutting down); it is {}",
                value.map_or_else(|| "missing".to_owned(), |v| format!("\"{v}\""))
            ));
        }
    }
    if let Some(endpoint) = field(|m| m.http_endpoint.clone())
        && endpoint != "enabled"
    {
        return Err(format!(
            "MetadataOptions.HttpEndpoint must be \"enabled\" (workers read their step from instance metadata); it is \"{endpoint}\""
        ));
    }
    Ok(())
}

/// `name` inside `dir`, refusing paths that leave it.
fn user_data_path(dir: &Path, name: &str) -> Result<PathBuf, String> {
    let relative = Path::new(name);
    if name.is_empty()
        || relative.is_absolute()
        || relative
            .components()
            .any(|c| !matches!(c, std::path::Component::Normal(_)))
    {
        return Err(format!(
            "UserDataFile \"{name}\" must name a file inside the user-data directory, e.g. \"bootstrap.sh\""
        ));
    }
    Ok(dir.join(relative))
}

fn to_request(file: &TemplateFile, user_data: &str) -> RequestLaunchTemplateData {
    let metadata = file.metadata_options.as_ref();
    let mut data = RequestLaunchTemplateData::builder()
        .image_id(&file.image_id)
        .set_instance_type(file.instance_type.as_deref().map(InstanceType::from))
        .set_key_name(file.key_name.clone())
        .set_security_group_ids(file.security_group_ids.clone())
        .user_data(aws_smithy_types::base64::encode(user_data))
        .set_instance_initiated_shutdown_behavior(
            file.instance_initiated_shutdown_behavior
                .as_deref()
                .map(ShutdownBehavior::from),
        )
        .metadata_options(
            LaunchTemplateInstanceMetadataOptionsRequest::builder()
                .set_http_endpoint(
                    metadata
                        .and_then(|m| m.http_endpoint.as_deref())
                        .map(LaunchTemplateInstanceMetadataEndpointState::from),
                )
                .set_http_tokens(
                    metadata
                        .and_then(|m| m.http_tokens.as_deref())
                        .map(LaunchTemplateHttpTokensState::from),
                )
                .set_http_put_response_hop_limit(
                    metadata.and_then(|m| m.http_put_response_hop_limit),
                )
                .set_instance_metadata_tags(
                    metadata
                        .and_then(|m| m.instance_metadata_tags.as_deref())
                        .map(LaunchTemplateInstanceMetadataTagsState::from),
                )
                .build(),
        );
    if let Some(profile) = &file.iam_instance_profile {
        data = data.iam_instance_profile(
            LaunchTemplateIamInstanceProfileSpecificationRequest::builder()
                .set_name(profile.name.clone())
                .set_arn(profile.arn.clone())
                .build(),
        );
    }
    for device in file.block_device_mappings.iter().flatten() {
        let ebs = &device.ebs;
        data = data.block_device_mappings(
            LaunchTemplateBlockDeviceMappingRequest::builder()
                .device_name(&device.device_name)
                .ebs(
                    LaunchTemplateEbsBlockDeviceRequest::builder()
                        .set_volume_size(ebs.volume_size)
                        .set_volume_type(ebs.volume_type.as_deref().map(VolumeType::from))
                        .set_delete_on_termination(ebs.delete_on_termination)
                        .set_encrypted(ebs.encrypted)
                        .set_iops(ebs.iops)
                        .set_throughput(ebs.throughput)
                        .build(),
                )
                .build(),
        );
    }
    for spec in file.tag_specifications.iter().flatten() {
        data = data.tag_specifications(
            LaunchTemplateTagSpecificationRequest::builder()
                .resource_type(ResourceType::from(spec.resource_type.as_str()))
                .set_tags(Some(
                    spec.tags
                        .iter()
                        .map(|t| Tag::builder().key(&t.key).value(&t.value).build())
                        .collect(),
                ))
                .build(),
        );
    }
    data.build()
}

/// What applying a template did (or, in a dry run, would do).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(tag = "change", rename_all = "snake_case")]
pub enum ApplyOutcome {
    /// The template did not exist; it was created as version 1.
    Created {
        /// The template name.
        template: String,
    },
    /// The file changed: a new version became the default.
    NewVersion {
        /// The template name.
        template: String,
        /// The new default version.
        version: i64,
        /// The default version before.
        previous: i64,
    },
    /// The default version already matches the file.
    Unchanged {
        /// The template name.
        template: String,
        /// The default version.
        version: i64,
    },
}

/// Creates `rendered`'s template, or adds a version and makes it the
/// default if the file changed; with `dry_run`, says what it would do.
pub async fn apply(
    client: &Client,
    rendered: &Rendered,
    dry_run: bool,
) -> Result<ApplyOutcome, FleetError> {
    let template = rendered.name.clone();
    let Some(current) = describe(client, &template).await? else {
        if !dry_run {
            client
                .create_launch_template()
                .launch_template_name(&template)
                .version_description(rendered.description())
                .launch_template_data(rendered.data.clone())
                .send()
                .await
                .map_err(|e| classify("CreateLaunchTemplate", &e))?;
        }
        return Ok(ApplyOutcome::Created { template });
    };
    let versions = client
        .describe_launch_template_versions()
        .launch_template_name(&template)
        .versions("$Default")
        .send()
        .await
        .map_err(|e| classify("DescribeLaunchTemplateVersions", &e))?;
    let default_description = versions
        .launch_template_versions()
        .first()
        .and_then(|v| v.version_description());
    if default_description == Some(rendered.description().as_str()) {
        return Ok(ApplyOutcome::Unchanged {
            template,
            version: current.default_version,
        });
    }
    let version = if dry_run {
        current.latest_version + 1
    } else {
        let created = client
            .create_launch_template_version()
            .launch_template_name(&template)
            .version_description(rendered.description())
            .launch_template_data(rendered.data.clone())
            .send()
            .await
            .map_err(|e| classify("CreateLaunchTemplateVersion", &e))?;
        let version = created
            .launch_template_version()
            .and_then(aws_sdk_ec2::types::LaunchTemplateVersion::version_number)
            .ok_or_else(|| FleetError::Ec2 {
                operation: "CreateLaunchTemplateVersion",
                message: "the answer carries no version number".to_owned(),
            })?;
        client
            .modify_launch_template()
            .launch_template_name(&template)
            .default_version(version.to_string())
            .send()
            .await
            .map_err(|e| classify("ModifyLaunchTemplate", &e))?;
        version
    };
    Ok(ApplyOutcome::NewVersion {
        template,
        version,
        previous: current.default_version,
    })
}

/// A template's version numbers.
#[derive(Debug, Clone, Copy)]
pub struct TemplateVersions {
    /// The default version.
    pub default_version: i64,
    /// The latest version.
    pub latest_version: i64,
}

/// The versions of the template `name`, or `None` when there is none.
pub async fn describe(client: &Client, name: &str) -> Result<Option<TemplateVersions>, FleetError> {
    match client
        .describe_launch_templates()
        .launch_template_names(name)
        .send()
        .await
    {
        Ok(out) => Ok(out
            .launch_templates()
            .iter()
            .find(|t| t.launch_template_name() == Some(name))
            .map(|t| TemplateVersions {
                default_version: t.default_version_number().unwrap_or(1),
                latest_version: t.latest_version_number().unwrap_or(1),
            })),
        Err(e)
            if error_code(&e)
                .is_some_and(|c| c.starts_with("InvalidLaunchTemplateName.NotFound")) =>
        {
            Ok(None)
        }
        Err(e) => Err(classify("DescribeLaunchTemplates", &e)),
    }
}

#[cfg(test)]
mod tests;
