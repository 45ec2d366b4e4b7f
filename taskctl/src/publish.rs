//! `taskctl agent publish`: the agent binary in S3, where the bootstrap of
//! every EC2 worker (`userdata/bootstrap.sh`) downloads it from.
//!
//! Layout (shared with the bootstrap): `s3://BUCKET/taskfleet/agent/VERSION/agent`
//! and, beside it, `agent.sha256` in `sha256sum` format. The bootstrap
//! refuses a binary whose digest differs from that file.
//!
//! Guarantees: a version is written once. The binary is uploaded before
//! its checksum, so a checksum never names a binary that is not there;
//! publishing the same binary again changes nothing; a different binary
//! under a published version is refused unless `--replace` is given.

use std::path::Path;

use anyhow::{Context, Result, anyhow, bail};
use aws_sdk_s3::Client;
use aws_sdk_s3::error::{DisplayErrorContext, ProvideErrorMetadata, SdkError};
use aws_sdk_s3::primitives::ByteStream;
use serde::Serialize;
use sha2::{Digest, Sha256};
use taskfleet::fleet::AGENT_KEY_PREFIX;

use crate::cli::{AgentPublishArgs, GlobalArgs};

/// What `agent publish` did (its `--json` record).
#[derive(Debug, Serialize)]
pub struct Published {
    /// The bucket.
    pub bucket: String,
    /// The version published.
    pub version: String,
    /// Key of the binary.
    pub binary_key: String,
    /// Key of its checksum.
    pub checksum_key: String,
    /// Hex SHA-256 of the binary.
    pub sha256: String,
    /// Size of the binary.
    pub bytes: u64,
    /// `uploaded`, `unchanged` (that binary was already published under
    /// that version), `replaced`, or `dry-run`.
    pub outcome: &'static str,
}

/// `taskctl agent publish`.
pub async fn publish(global: &GlobalArgs, args: &AgentPublishArgs) -> Result<()> {
    let binary = std::fs::read(&args.binary)
        .with_context(|| format!("cannot read the agent binary {}", args.binary.display()))?;
    if !(binary.starts_with(b"\x7fELF") || binary.starts_with(b"#!")) {
        bail!(
            "{} is not an executable (no ELF header); give the agent binary, e.g. target/release/agent",
            args.binary.display()
        );
    }
    let version = match &args.version {
        Some(v) => v.clone(),
        None => version_of(&args.binary)?,
    };
    if version.is_empty()
        || !version
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '-' | '_' | '+'))
    {
        bail!("'{version}' cannot be an agent version: use letters, digits, '.', '-', '_' or '+'");
    }
    let sha256 = taskfleet::fleet::hex(&Sha256::digest(&binary));
    let prefix = format!("{AGENT_KEY_PREFIX}/{version}");
    let mut record = Published {
        bucket: args.bucket.clone(),
        version,
        binary_key: format!("{prefix}/agent"),
        checksum_key: format!("{prefix}/agent.sha256"),
        sha256,
        bytes: binary.len() as u64,
        outcome: "uploaded",
    };
    let client = client(global, args).await;
    let published = published_checksum(&client, &record).await?;
    match published {
        Some(digest) if digest == record.sha256 => record.outcome = "unchanged",
        Some(digest) if !args.replace => bail!(
            "agent version {} is already published in s3://{}/{} with another binary (sha256 {digest}); publish this one under a new --agent-version, or pass --replace",
            record.version,
            record.bucket,
            record.binary_key
        ),
        Some(_) => record.outcome = "replaced",
        None => {}
    }
    if args.dry_run {
        if record.outcome != "unchanged" {
            record.outcome = "dry-run";
        }
    } else if record.outcome != "unchanged" {
        put(&client, &record, &record.binary_key, binary).await?;
        let line = format!("{}  agent\n", record.sha256);
        put(&client, &record, &record.checksum_key, line.into_bytes()).await?;
    }
    if args.json {
        println!("{}", serde_json::to_string_pretty(&record)?);
        return Ok(());
    }
    let url = format!("s3://{}/{}", record.bucket, record.binary_key);
    match record.outcome {
        "unchanged" => println!(
            "agent {} is already published with this binary at {url}; nothing to do",
            record.version
        ),
        "dry-run" => println!(
            "would upload {} ({} bytes, sha256 {}) to {url} and its checksum beside it",
            args.binary.display(),
            record.bytes,
            record.sha256
        ),
        outcome => println!(
            "{outcome} agent {} at {url} (sha256 {})",
            record.version, record.sha256
        ),
    }
    if record.outcome != "dry-run" {
        println!(
            "instances install it when their template says so: taskctl template apply --var TASKFLEET_AGENT_BUCKET={} --var TASKFLEET_AGENT_VERSION={}",
            record.bucket, record.version
        );
    }
    Ok(())
}

/// The version `BINARY --version` prints (`agent 0.1.0` gives `0.1.0`).
fn version_of(binary: &Path) -> Result<String> {
    let out = std::process::Command::new(binary)
        .arg("--version")
        .output()
        .map_err(|e| {
            anyhow!(
                "cannot run {} --version to learn its version ({e}); give --agent-version",
                binary.display()
            )
        })?;
    let text = String::from_utf8_lossy(&out.stdout);
    match text.split_whitespace().collect::<Vec<_>>().as_slice() {
        ["agent", version] if out.status.success() => Ok((*version).to_owned()),
        _ => bail!(
            "{} --version did not print 'agent VERSION' (is it the agent binary?); give --agent-version",
            binary.display()
        ),
    }
}

async fn client(global: &GlobalArgs, args: &AgentPublishArgs) -> Client {
    crate::connect::s3(global, args.s3_endpoint_url.as_deref()).await
}

/// The digest already published under the record's version, if any.
async fn published_checksum(client: &Client, record: &Published) -> Result<Option<String>> {
    match client
        .get_object()
        .bucket(&record.bucket)
        .key(&record.checksum_key)
        .send()
        .await
    {
        Ok(out) => {
            let body = out
                .body
                .collect()
                .await
                .map_err(|e| {
                    anyhow!(
                        "cannot read s3://{}/{}: {e}",
                        record.bucket,
                        record.checksum_key
                    )
                })?
                .into_bytes();
            let text = String::from_utf8_lossy(&body);
            Ok(text.split_whitespace().next().map(str::to_owned))
        }
        Err(SdkError::ServiceError(e)) if e.err().is_no_such_key() => Ok(None),
        Err(e) => Err(s3_error(&e, record, "read")),
    }
}

async fn put(client: &Client, record: &Published, key: &str, body: Vec<u8>) -> Result<()> {
    client
        .put_object()
        .bucket(&record.bucket)
        .key(key)
        .body(ByteStream::from(body))
        .send()
        .await
        .map_err(|e| s3_error(&e, record, "write"))?;
    Ok(())
}

/// One sentence for an S3 failure.
fn s3_error<E>(
    e: &SdkError<E, aws_sdk_s3::config::http::HttpResponse>,
    record: &Published,
    verb: &str,
) -> anyhow::Error
where
    E: ProvideErrorMetadata + std::error::Error + Send + Sync + 'static,
{
    let bucket = &record.bucket;
    // A refused GET or HEAD comes back as a bare 403, with no error code.
    let forbidden = e.raw_response().map(|r| r.status().as_u16()) == Some(403);
    match e.code().or(forbidden.then_some("AccessDenied")) {
        Some("NoSuchBucket") => anyhow!(
            "the bucket {bucket} does not exist; create it (the terraform in terraform/ does) or give another --bucket"
        ),
        Some("AccessDenied" | "AllAccessDisabled") => anyhow!(
            "no permission to {verb} s3://{bucket}/{AGENT_KEY_PREFIX}; use credentials that may (s3:GetObject and s3:PutObject on it), over HTTPS if the bucket's policy asks for it"
        ),
        Some("InvalidAccessKeyId" | "SignatureDoesNotMatch" | "ExpiredToken") => anyhow!(
            "the AWS credentials were refused ({}); renew them (aws sso login, or check AWS_ACCESS_KEY_ID)",
            e.code().unwrap_or_default()
        ),
        _ => anyhow!(
            "cannot {verb} s3://{bucket}/{}: {}",
            AGENT_KEY_PREFIX,
            DisplayErrorContext(e)
        ),
    }
}
