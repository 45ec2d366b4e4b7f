//! Every AWS call each binary makes, and the IAM actions that grant it:
//! the one list that the code and the policies in `terraform/iam.tf` must
//! agree on.
//!
//! Guarantees:
//!
//! - Every client built in [`crate::connect`] carries a [`Guard`] for its
//!   binary, which refuses an operation that is not listed here before it
//!   is sent, with a message naming the operation and this file. So a call
//!   added to the code without a grant fails its tests (every test that
//!   drives the real binaries), instead of failing with `AccessDenied` in
//!   somebody's account.
//! - [`compare`] checks an IAM policy document against [`actions`]: the
//!   terraform test applies `terraform/` and checks that the agent role's
//!   and the operator policy's actions are exactly these, nothing missing
//!   and nothing more.
//!
//! Calls that are not the binaries' own are listed too, under the binary
//! whose credentials make them: the instance bootstrap
//! (`userdata/bootstrap.sh`) downloads the agent with the agent role.

use std::collections::BTreeSet;

use aws_smithy_runtime_api::box_error::BoxError;
use aws_smithy_runtime_api::client::interceptors::Intercept;
use aws_smithy_runtime_api::client::interceptors::context::BeforeSerializationInterceptorContextRef;
use aws_smithy_runtime_api::client::orchestrator::Metadata;
use aws_smithy_runtime_api::client::runtime_components::RuntimeComponents;
use aws_smithy_types::config_bag::ConfigBag;

/// Whose credentials make a call.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Caller {
    /// `taskctl`, run by people: the operator policy.
    #[default]
    Operator,
    /// `agent` and the instance bootstrap, on a worker: the agent role.
    Agent,
}

impl Caller {
    /// The binary, as messages name it.
    pub fn binary(self) -> &'static str {
        match self {
            Caller::Operator => "taskctl",
            Caller::Agent => "agent",
        }
    }

    /// The calls it may make.
    pub fn calls(self) -> &'static [Call] {
        match self {
            Caller::Operator => OPERATOR,
            Caller::Agent => AGENT,
        }
    }
}

/// One SDK operation and the IAM actions it needs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Call {
    /// The SDK's service name (`DynamoDB`, `EC2`, `S3`).
    pub service: &'static str,
    /// The operation (`GetItem`, `RunInstances`, ...).
    pub operation: &'static str,
    /// The IAM actions the operation needs; some need more than their
    /// own (`RunInstances` with an instance profile and tags).
    pub actions: &'static [&'static str],
    /// What makes it, for whoever reads the policy.
    pub why: &'static str,
}

const fn call(
    service: &'static str,
    operation: &'static str,
    actions: &'static [&'static str],
    why: &'static str,
) -> Call {
    Call {
        service,
        operation,
        actions,
        why,
    }
}

/// What `agent` and the bootstrap call, with the agent role.
pub const AGENT: &[Call] = &[
    call(
        "DynamoDB",
        "GetItem",
        &["dynamodb:GetItem"],
        "read the step and a task",
    ),
    call(
        "DynamoDB",
        "Query",
        &["dynamodb:Query"],
        "find claimable and reclaimable tasks, counters",
    ),
    call(
        "DynamoDB",
        "UpdateItem",
        &["dynamodb:UpdateItem"],
        "claim, heartbeat, release",
    ),
    // A transaction's parts are granted as the operations they are: an
    // escalation's end puts its run's task when there is none.
    call(
        "DynamoDB",
        "TransactWriteItems",
        &[
            "dynamodb:TransactWriteItems",
            "dynamodb:UpdateItem",
            "dynamodb:PutItem",
        ],
        "finish a task with its counters (and an escalated run's new task)",
    ),
    call(
        "EC2",
        "TerminateInstances",
        &["ec2:TerminateInstances"],
        "end its own instance",
    ),
    call(
        "S3",
        "PutObject",
        &["s3:PutObject"],
        "upload an attempt's log",
    ),
    call(
        "S3",
        "CreateMultipartUpload",
        &["s3:PutObject"],
        "upload a large log",
    ),
    call("S3", "UploadPart", &["s3:PutObject"], "upload a large log"),
    call(
        "S3",
        "CompleteMultipartUpload",
        &["s3:PutObject"],
        "upload a large log",
    ),
    call(
        "S3",
        "AbortMultipartUpload",
        &["s3:AbortMultipartUpload"],
        "give up a large log's failed upload",
    ),
    call(
        "S3",
        "HeadObject",
        &["s3:GetObject"],
        "bootstrap: download the agent",
    ),
    call(
        "S3",
        "GetObject",
        &["s3:GetObject"],
        "bootstrap: download the agent and its checksum",
    ),
];

/// What `taskctl` calls, with the operator policy.
pub const OPERATOR: &[Call] = &[
    call("DynamoDB", "CreateTable", &["dynamodb:CreateTable"], "init"),
    call(
        "DynamoDB",
        "DescribeTable",
        &["dynamodb:DescribeTable"],
        "check the table",
    ),
    call(
        "DynamoDB",
        "DescribeTimeToLive",
        &["dynamodb:DescribeTimeToLive"],
        "check the table",
    ),
    call(
        "DynamoDB",
        "UpdateTimeToLive",
        &["dynamodb:UpdateTimeToLive"],
        "init",
    ),
    call(
        "DynamoDB",
        "GetItem",
        &["dynamodb:GetItem"],
        "show, steps, load",
    ),
    call(
        "DynamoDB",
        "PutItem",
        &["dynamodb:PutItem"],
        "load: a new step",
    ),
    call(
        "DynamoDB",
        "UpdateItem",
        &["dynamodb:UpdateItem"],
        "load, recount",
    ),
    call("DynamoDB", "Query", &["dynamodb:Query"], "status, recount"),
    call(
        "DynamoDB",
        "BatchGetItem",
        &["dynamodb:BatchGetItem"],
        "status: counters",
    ),
    call(
        "DynamoDB",
        "BatchWriteItem",
        &["dynamodb:BatchWriteItem"],
        "load: a new step's first load",
    ),
    call(
        "DynamoDB",
        "TransactWriteItems",
        &[
            "dynamodb:TransactWriteItems",
            "dynamodb:PutItem",
            "dynamodb:UpdateItem",
            "dynamodb:DeleteItem",
        ],
        "load, retry, cancel with counters; prune's removals",
    ),
    call(
        "DynamoDB",
        "DeleteItem",
        &["dynamodb:DeleteItem"],
        "delete-step: a step's counters, load records and step item",
    ),
    call(
        "EC2",
        "CreateLaunchTemplate",
        &["ec2:CreateLaunchTemplate"],
        "template apply",
    ),
    call(
        "EC2",
        "CreateLaunchTemplateVersion",
        &["ec2:CreateLaunchTemplateVersion"],
        "template apply",
    ),
    call(
        "EC2",
        "ModifyLaunchTemplate",
        &["ec2:ModifyLaunchTemplate"],
        "template apply: the default version",
    ),
    call(
        "EC2",
        "DescribeLaunchTemplates",
        &["ec2:DescribeLaunchTemplates"],
        "template apply, launch",
    ),
    call(
        "EC2",
        "DescribeLaunchTemplateVersions",
        &["ec2:DescribeLaunchTemplateVersions"],
        "template apply",
    ),
    call(
        "EC2",
        "RunInstances",
        &["ec2:RunInstances", "ec2:CreateTags", "iam:PassRole"],
        "launch: tagged instances with the agent's instance profile",
    ),
    call(
        "EC2",
        "DescribeInstances",
        &["ec2:DescribeInstances"],
        "fleet, launch caps",
    ),
    call("EC2", "CreateTags", &["ec2:CreateTags"], "stop: drain"),
    call(
        "EC2",
        "TerminateInstances",
        &["ec2:TerminateInstances"],
        "stop --now",
    ),
    // Without s3:ListBucket, S3 answers a missing key with 403 instead
    // of NoSuchKey: publish looks for an existing version that way.
    call(
        "S3",
        "GetObject",
        &["s3:GetObject", "s3:ListBucket"],
        "agent publish, sheets from S3, logs",
    ),
    call("S3", "PutObject", &["s3:PutObject"], "agent publish"),
];

/// The IAM actions `caller` needs, each once.
pub fn actions(caller: Caller) -> BTreeSet<&'static str> {
    actions_of(caller.calls())
}

fn actions_of(calls: &[Call]) -> BTreeSet<&'static str> {
    calls
        .iter()
        .flat_map(|c| c.actions.iter().copied())
        .collect()
}

/// Whether `caller` may make `operation` of `service`.
pub fn allowed(caller: Caller, service: &str, operation: &str) -> bool {
    caller
        .calls()
        .iter()
        .any(|c| c.service == service && c.operation == operation)
}

/// Checks that the `Allow` statements of an IAM policy document grant
/// exactly `expected`: the message lists what is missing and what is more.
pub fn compare(expected: &BTreeSet<&str>, policy: &serde_json::Value) -> Result<(), String> {
    let granted = granted_actions(policy)?;
    let missing: Vec<&str> = expected
        .iter()
        .filter(|a| !granted.contains(**a))
        .copied()
        .collect();
    let more: Vec<&str> = granted
        .iter()
        .filter(|a| !expected.contains(a.as_str()))
        .map(String::as_str)
        .collect();
    if missing.is_empty() && more.is_empty() {
        return Ok(());
    }
    let mut why = Vec::new();
    if !missing.is_empty() {
        why.push(format!(
            "the code calls what the policy does not grant: {}",
            missing.join(", ")
        ));
    }
    if !more.is_empty() {
        why.push(format!(
            "the policy grants what the code never calls: {}",
            more.join(", ")
        ));
    }
    Err(why.join("; "))
}

/// The actions of a policy document's `Allow` statements. Wildcards,
/// `NotAction` and `Deny` are refused: the comparison would mean nothing.
pub fn granted_actions(policy: &serde_json::Value) -> Result<BTreeSet<String>, String> {
    let statements = match &policy["Statement"] {
        serde_json::Value::Array(list) => list.clone(),
        one @ serde_json::Value::Object(_) => vec![one.clone()],
        _ => return Err("the policy has no Statement".into()),
    };
    let mut out = BTreeSet::new();
    for s in &statements {
        if s.get("NotAction").is_some() {
            return Err("a statement uses NotAction".into());
        }
        if s["Effect"] != "Allow" {
            return Err(format!("a statement is not Allow: {}", s["Effect"]));
        }
        let actions = match &s["Action"] {
            serde_json::Value::String(a) => vec![a.clone()],
            serde_json::Value::Array(list) => list
                .iter()
                .filter_map(|a| a.as_str().map(str::to_owned))
                .collect(),
            _ => return Err("a statement has no Action".into()),
        };
        for a in actions {
            if a.contains('*') {
                return Err(format!("a statement grants a wildcard: {a}"));
            }
            out.insert(a);
        }
    }
    Ok(out)
}

/// A call the [`Guard`] refused: the binary's IAM policy does not grant it.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error(
    "{binary} called {service} {operation}, which is not in its list of AWS calls (taskfleet/src/iam.rs) and so not granted by terraform/iam.tf; add it to both"
)]
pub struct NotGranted {
    /// The binary.
    pub binary: &'static str,
    /// The SDK's service name.
    pub service: String,
    /// The operation.
    pub operation: String,
}

/// The [`NotGranted`] somewhere in `err`'s chain of causes, if any.
pub fn not_granted<'a>(err: &'a (dyn std::error::Error + 'static)) -> Option<&'a NotGranted> {
    let mut cause = Some(err);
    while let Some(e) = cause {
        if let Some(refused) = e.downcast_ref::<NotGranted>() {
            return Some(refused);
        }
        cause = e.source();
    }
    None
}

/// The interceptor that keeps a client to its binary's list. An operation
/// without metadata (none the SDKs generate) is refused too: it could not
/// be checked.
#[derive(Debug, Clone, Copy)]
pub struct Guard(pub Caller);

impl Intercept for Guard {
    fn name(&self) -> &'static str {
        "taskfleet::iam::Guard"
    }

    fn read_before_serialization(
        &self,
        _context: &BeforeSerializationInterceptorContextRef<'_>,
        _components: &RuntimeComponents,
        cfg: &mut ConfigBag,
    ) -> Result<(), BoxError> {
        let (service, operation) = cfg
            .load::<Metadata>()
            .map_or(("?", "an operation without metadata"), |m| {
                (m.service(), m.name())
            });
        if allowed(self.0, service, operation) {
            return Ok(());
        }
        Err(Box::new(NotGranted {
            binary: self.0.binary(),
            service: service.to_owned(),
            operation: operation.to_owned(),
        }))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn policy(actions: &BTreeSet<&str>) -> serde_json::Value {
        serde_json::json!({
            "Version": "2012-10-17",
            "Statement": [{"Effect": "Allow", "Action": actions.iter().collect::<Vec<_>>(), "Resource": "*"}]
        })
    }

    #[test]
    fn a_policy_of_exactly_the_listed_actions_passes() {
        for caller in [Caller::Operator, Caller::Agent] {
            compare(&actions(caller), &policy(&actions(caller))).unwrap();
        }
    }

    #[test]
    fn a_call_added_without_a_grant_fails_the_comparison() {
        // What the terraform test would see after someone adds a call to
        // the agent's list (the code) but not to terraform/iam.tf.
        let granted = policy(&actions(Caller::Agent));
        let mut calls = AGENT.to_vec();
        calls.push(call("DynamoDB", "Scan", &["dynamodb:Scan"], "a new call"));
        let err = compare(&actions_of(&calls), &granted).unwrap_err();
        assert!(
            err.contains("does not grant: dynamodb:Scan"),
            "unexpected: {err}"
        );
    }

    #[test]
    fn a_grant_the_code_never_uses_fails_the_comparison() {
        let mut more = actions(Caller::Agent);
        more.insert("dynamodb:DeleteItem");
        let err = compare(&actions(Caller::Agent), &policy(&more)).unwrap_err();
        assert!(
            err.contains("never calls: dynamodb:DeleteItem"),
            "unexpected: {err}"
        );
    }

    #[test]
    fn wildcards_and_not_action_are_refused() {
        let wild = serde_json::json!({"Statement": [{"Effect": "Allow", "Action": "dynamodb:*", "Resource": "*"}]});
        assert!(granted_actions(&wild).unwrap_err().contains("wildcard"));
        let not = serde_json::json!({"Statement": {"Effect": "Allow", "NotAction": "s3:DeleteObject", "Resource": "*"}});
        assert!(granted_actions(&not).unwrap_err().contains("NotAction"));
    }

    /// The agent's guarded DynamoDB client, pointed at port 9 (discard) on
    /// loopback: nothing there answers.
    fn agent_client_on_port_9() -> aws_sdk_dynamodb::Client {
        use aws_sdk_dynamodb::config::{BehaviorVersion, Credentials, Region};
        aws_sdk_dynamodb::Client::from_conf(
            aws_sdk_dynamodb::Config::builder()
                .behavior_version(BehaviorVersion::latest())
                .region(Region::new("us-east-1"))
                .endpoint_url("http://127.0.0.1:9")
                .credentials_provider(Credentials::new("k", "s", None, None, "test"))
                .interceptor(Guard(Caller::Agent))
                .build(),
        )
    }

    #[tokio::test]
    async fn a_guarded_client_refuses_an_unlisted_call_before_sending_it() {
        // Nothing answers on port 9, so only a call refused before it is
        // sent can fail with the guard's message.
        let client = agent_client_on_port_9();
        let err = client.scan().table_name("t").send().await.unwrap_err();
        let text = format!(
            "{}",
            aws_smithy_types::error::display::DisplayErrorContext(&err)
        );
        assert!(
            text.contains("agent called DynamoDB Scan, which is not in its list of AWS calls"),
            "{text}"
        );
        // A listed call gets past the guard (and fails to connect).
        let err = client
            .get_item()
            .table_name("t")
            .key("pk", aws_sdk_dynamodb::types::AttributeValue::S("k".into()))
            .send()
            .await
            .unwrap_err();
        let text = format!(
            "{}",
            aws_smithy_types::error::display::DisplayErrorContext(&err)
        );
        assert!(!text.contains("not in its list"), "{text}");
    }

    #[tokio::test]
    async fn a_store_call_the_guard_refuses_is_access_denied_which_no_retry_fixes() {
        let client = agent_client_on_port_9();
        let store = crate::DynamoStore::new(client, "t", "test");
        // The agent may not create tables.
        let err = store.init().await.unwrap_err();
        assert!(
            matches!(err, crate::StoreError::AccessDenied { .. }),
            "{err:?}"
        );
        assert!(err.is_fatal());
        assert!(
            err.to_string()
                .contains("agent called DynamoDB CreateTable"),
            "{err}"
        );
    }

    #[test]
    fn the_guard_allows_only_listed_operations() {
        assert!(allowed(Caller::Agent, "DynamoDB", "UpdateItem"));
        assert!(!allowed(Caller::Agent, "DynamoDB", "BatchWriteItem"));
        assert!(!allowed(Caller::Agent, "EC2", "RunInstances"));
        assert!(allowed(Caller::Operator, "EC2", "RunInstances"));
        assert!(!allowed(Caller::Operator, "DynamoDB", "Scan"));
    }
}
