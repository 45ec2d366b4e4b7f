//! Where `taskctl load` reads a sheet from: a file, standard input (`-`),
//! or S3 (`s3://BUCKET/KEY`, with the same AWS configuration as every
//! other command).

use std::io::Read;
use std::path::Path;

use anyhow::{Context, Result, anyhow};

use crate::cli::GlobalArgs;

/// A sheet's source.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Source<'a> {
    /// A file.
    File(&'a Path),
    /// Standard input.
    Stdin,
    /// An S3 object.
    S3 {
        /// The bucket.
        bucket: String,
        /// The key.
        key: String,
    },
}

/// What the `SHEET` argument names.
pub fn source(arg: &Path) -> Source<'_> {
    let text = arg.to_string_lossy();
    if text == "-" {
        return Source::Stdin;
    }
    if let Some(rest) = text.strip_prefix("s3://")
        && let Some((bucket, key)) = rest.split_once('/')
    {
        return Source::S3 {
            bucket: bucket.to_owned(),
            key: key.to_owned(),
        };
    }
    Source::File(arg)
}

/// The bytes of a sheet from standard input or S3.
pub async fn fetch(global: &GlobalArgs, source: &Source<'_>) -> Result<Vec<u8>> {
    match source {
        Source::File(path) => {
            std::fs::read(path).with_context(|| format!("cannot read {}", path.display()))
        }
        Source::Stdin => {
            let mut bytes = Vec::new();
            std::io::stdin()
                .read_to_end(&mut bytes)
                .context("cannot read the sheet from standard input")?;
            Ok(bytes)
        }
        Source::S3 { bucket, key } => {
            let client = crate::publish::s3_client(global, None).await;
            let out = client
                .get_object()
                .bucket(bucket)
                .key(key)
                .send()
                .await
                .map_err(|e| match e.as_service_error() {
                    Some(s) if s.is_no_such_key() => {
                        anyhow!("there is no sheet at s3://{bucket}/{key}")
                    }
                    _ => anyhow!(
                        "cannot read the sheet s3://{bucket}/{key}: {}",
                        aws_sdk_s3::error::DisplayErrorContext(&e)
                    ),
                })?;
            let body = out
                .body
                .collect()
                .await
                .map_err(|e| anyhow!("cannot read the sheet s3://{bucket}/{key}: {e}"))?;
            Ok(body.into_bytes().to_vec())
        }
    }
}
