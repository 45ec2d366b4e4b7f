//! Attempt logs in S3: where each attempt's log goes, uploading a log file
//! as it stands, and reading a log back from wherever its URI says.
//!
//! Layout: `s3://BUCKET/PREFIX/STEP/NAME/ATTEMPT.log`, where `NAME` is the
//! task id made safe for a path and distinct per id (the same name the
//! agent gives the log file on its disk), so that every attempt of every
//! task has an object of its own and a later attempt never overwrites an
//! earlier one's log.
//!
//! Guarantees:
//!
//! - A log is streamed from its file, never held in memory: up to
//!   [`PART_BYTES`] it is one `PutObject` read from the file; larger, a
//!   multipart upload whose parts are each read from the file as they are
//!   sent (at most one part in flight), aborted if any part fails.
//! - An upload sends the file as it stood when the upload began; a log
//!   still being written is uploaded again later, whole, over the same
//!   object (S3 objects are replaced atomically: a reader sees one
//!   complete upload or the next).

use std::path::Path;

use aws_sdk_s3::Client;
use aws_sdk_s3::error::{ProvideErrorMetadata, SdkError};
use aws_sdk_s3::primitives::{ByteStream, Length};
use aws_sdk_s3::types::{CompletedMultipartUpload, CompletedPart};

/// Where the agent's logs go unless told otherwise, inside the bucket.
pub const DEFAULT_PREFIX: &str = "taskfleet/logs";

/// Size of a multipart upload's parts (S3 wants at least 5 MiB but the
/// last): what an upload holds in flight at most.
pub const PART_BYTES: u64 = 8 * 1024 * 1024;

/// Where a step's attempt logs go.
#[derive(Debug, Clone)]
pub struct LogBucket {
    /// The bucket.
    pub bucket: String,
    /// The key prefix, without a trailing `/`.
    pub prefix: String,
}

impl LogBucket {
    /// The key of attempt `attempt` of the task whose path-safe name is
    /// `name` in `step`.
    pub fn key(&self, step: &str, name: &str, attempt: u32) -> String {
        let prefix = self.prefix.trim_end_matches('/');
        if prefix.is_empty() {
            format!("{step}/{name}/{attempt}.log")
        } else {
            format!("{prefix}/{step}/{name}/{attempt}.log")
        }
    }

    /// The `s3://` URI of `key`.
    pub fn uri(&self, key: &str) -> String {
        format!("s3://{}/{key}", self.bucket)
    }
}

/// Splits `s3://BUCKET/KEY`.
pub fn parse_s3_uri(uri: &str) -> Option<(&str, &str)> {
    let rest = uri.strip_prefix("s3://")?;
    let (bucket, key) = rest.split_once('/')?;
    (!bucket.is_empty() && !key.is_empty()).then_some((bucket, key))
}

/// Uploads the file at `path` as it stands to `bucket`/`key`; returns the
/// bytes sent.
pub async fn upload(client: &Client, bucket: &str, key: &str, path: &Path) -> Result<u64, String> {
    let len = std::fs::metadata(path)
        .map_err(|e| format!("cannot read {}: {e}", path.display()))?
        .len();
    if len <= PART_BYTES {
        let body = part(path, 0, len).await?;
        client
            .put_object()
            .bucket(bucket)
            .key(key)
            .content_type("text/plain; charset=utf-8")
            .body(body)
            .send()
            .await
            .map_err(|e| format!("cannot upload s3://{bucket}/{key}: {}", failure(&e)))?;
        return Ok(len);
    }
    let created = client
        .create_multipart_upload()
        .bucket(bucket)
        .key(key)
        .content_type("text/plain; charset=utf-8")
        .send()
        .await
        .map_err(|e| format!("cannot upload s3://{bucket}/{key}: {}", failure(&e)))?;
    let Some(upload_id) = created.upload_id() else {
        return Err(format!(
            "cannot upload s3://{bucket}/{key}: S3 gave no upload id"
        ));
    };
    match upload_parts(client, bucket, key, upload_id, path, len).await {
        Ok(()) => Ok(len),
        Err(e) => {
            // An unfinished upload costs storage until aborted (the
            // bucket's lifecycle rule aborts those that get away).
            let _ = client
                .abort_multipart_upload()
                .bucket(bucket)
                .key(key)
                .upload_id(upload_id)
                .send()
                .await;
            Err(e)
        }
    }
}

async fn upload_parts(
    client: &Client,
    bucket: &str,
    key: &str,
    upload_id: &str,
    path: &Path,
    len: u64,
) -> Result<(), String> {
    let mut parts = Vec::new();
    let mut offset = 0;
    let mut number = 1;
    while offset < len {
        let size = PART_BYTES.min(len - offset);
        let out = client
            .upload_part()
            .bucket(bucket)
            .key(key)
            .upload_id(upload_id)
            .part_number(number)
            .body(part(path, offset, size).await?)
            .send()
            .await
            .map_err(|e| {
                format!(
                    "cannot upload part {number} of s3://{bucket}/{key}: {}",
                    failure(&e)
                )
            })?;
        parts.push(
            CompletedPart::builder()
                .part_number(number)
                .set_e_tag(out.e_tag().map(str::to_owned))
                .build(),
        );
        offset += size;
        number += 1;
    }
    client
        .complete_multipart_upload()
        .bucket(bucket)
        .key(key)
        .upload_id(upload_id)
        .multipart_upload(
            CompletedMultipartUpload::builder()
                .set_parts(Some(parts))
                .build(),
        )
        .send()
        .await
        .map_err(|e| format!("cannot upload s3://{bucket}/{key}: {}", failure(&e)))?;
    Ok(())
}

/// What an S3 request's failure was, in one line: the service's code and
/// message, the HTTP status of a bare refusal, or the innermost cause of a
/// request that never got an answer (the endpoint is down, a timeout).
pub fn failure<E>(e: &SdkError<E, aws_sdk_s3::config::http::HttpResponse>) -> String
where
    E: ProvideErrorMetadata + std::error::Error + 'static,
{
    if let Some(code) = e.code() {
        return match e.message() {
            Some(message) => format!("{code}: {message}"),
            None => code.to_owned(),
        };
    }
    if let Some(status) = e.raw_response().map(|r| r.status().as_u16()) {
        return match status {
            403 => "access denied (HTTP 403)".to_owned(),
            404 => "not found (HTTP 404)".to_owned(),
            other => format!("HTTP {other}"),
        };
    }
    let mut cause: &(dyn std::error::Error + 'static) = e;
    while let Some(next) = cause.source() {
        cause = next;
    }
    cause.to_string()
}

/// `size` bytes of the file from `offset`, streamed as they are sent.
async fn part(path: &Path, offset: u64, size: u64) -> Result<ByteStream, String> {
    ByteStream::read_from()
        .path(path)
        .offset(offset)
        .length(Length::Exact(size))
        .build()
        .await
        .map_err(|e| format!("cannot read {}: {e}", path.display()))
}

/// Where a log's bytes come from when it is read back.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum LogSource<'a> {
    /// A file on this machine (`file://PATH`).
    File(&'a Path),
    /// An S3 object (`s3://BUCKET/KEY`).
    S3 {
        /// The bucket.
        bucket: &'a str,
        /// The key.
        key: &'a str,
    },
}

/// What a log URI names, or why it cannot be read.
pub fn source(uri: &str) -> Result<LogSource<'_>, String> {
    if let Some(path) = uri.strip_prefix("file://") {
        return Ok(LogSource::File(Path::new(path)));
    }
    if let Some((bucket, key)) = parse_s3_uri(uri) {
        return Ok(LogSource::S3 { bucket, key });
    }
    Err(format!("'{uri}' is not a log location this tool can read"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_are_per_step_task_and_attempt() {
        let b = LogBucket {
            bucket: "lab".into(),
            prefix: "taskfleet/logs/".into(),
        };
        let key = b.key("align", "NA12878_1-79fe294601bf42b8", 3);
        assert_eq!(key, "taskfleet/logs/align/NA12878_1-79fe294601bf42b8/3.log");
        assert_eq!(
            b.uri(&key),
            "s3://lab/taskfleet/logs/align/NA12878_1-79fe294601bf42b8/3.log"
        );
        let bare = LogBucket {
            bucket: "lab".into(),
            prefix: String::new(),
        };
        assert_eq!(bare.key("qc", "S1-00", 1), "qc/S1-00/1.log");
    }

    #[test]
    fn log_uris_name_a_file_or_an_object() {
        assert_eq!(
            source("file:///var/log/taskfleet/a.1.log").unwrap(),
            LogSource::File(Path::new("/var/log/taskfleet/a.1.log"))
        );
        assert_eq!(
            source("s3://lab/k/1.log").unwrap(),
            LogSource::S3 {
                bucket: "lab",
                key: "k/1.log"
            }
        );
        assert!(source("s3://lab").is_err());
        assert!(source("https://example.org/x").is_err());
    }
}
