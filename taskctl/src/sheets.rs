//! Where `taskctl load` reads a sheet from: a file, standard input (`-`),
//! or S3 (`s3://BUCKET/KEY`, with the same AWS configuration as every
//! other command).

use std::io::Write;
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

/// A sheet from standard input or S3, written to a temporary file as it
/// arrives, so that it can be read twice (validated, then loaded) without
/// being held in memory. The file is removed when the value is dropped.
pub async fn spool(global: &GlobalArgs, source: &Source<'_>) -> Result<tempfile::NamedTempFile> {
    let mut file = tempfile::Builder::new()
        .prefix("taskctl-sheet-")
        .tempfile()
        .context("cannot make a temporary file for the sheet (is TMPDIR writable?)")?;
    match source {
        Source::File(path) => {
            let mut from = std::fs::File::open(path)
                .with_context(|| format!("cannot read {}", path.display()))?;
            std::io::copy(&mut from, &mut file)
                .with_context(|| format!("cannot copy {}", path.display()))?;
        }
        Source::Stdin => {
            std::io::copy(&mut std::io::stdin().lock(), &mut file)
                .context("cannot read the sheet from standard input")?;
        }
        Source::S3 { bucket, key } => {
            let client = crate::connect::s3(global, None).await;
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
            let mut body = out.body;
            while let Some(chunk) = body
                .try_next()
                .await
                .map_err(|e| anyhow!("cannot read the sheet s3://{bucket}/{key}: {e}"))?
            {
                file.write_all(&chunk)
                    .context("cannot write the sheet to a temporary file")?;
            }
        }
    }
    file.flush()
        .context("cannot write the sheet to a temporary file")?;
    Ok(file)
}
