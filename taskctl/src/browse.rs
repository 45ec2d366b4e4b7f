//! `taskctl where` (one id in every step) and `taskctl export` (every task
//! of a step), both read by key or by partition, never by scanning.

use std::io::{BufWriter, Write};

use anyhow::{Context, Result, bail};
use taskfleet::model::{TaskPage, TaskSummary};
use taskfleet::store::TaskStore;

use crate::cli::{ExportArgs, ExportFormat, GlobalArgs, WhereArgs};
use crate::connect;

/// Tasks read per request while exporting.
const PAGE: usize = 1000;
/// Shard partitions read at once while exporting.
const PARALLEL: usize = 4;

/// Runs `taskctl where`.
pub async fn where_is(global: &GlobalArgs, args: &WhereArgs) -> Result<()> {
    let store = connect::open(global).await?;
    let found = store.find(&args.task).await?;
    if args.json {
        println!("{}", serde_json::to_string_pretty(&found)?);
        return Ok(());
    }
    if found.is_empty() {
        bail!(
            "no step of {} has a task '{}'; `taskctl status` lists the steps",
            store.describe(),
            args.task
        );
    }
    let width = found.iter().map(|t| t.step.len()).max().unwrap_or(4).max(4);
    println!(
        "{:<width$}  {:<8}  {:>7}  {:<14}  LOG",
        "STEP", "STATE", "ATTEMPT", "LAST END"
    );
    for t in &found {
        let end = match (t.exit_code, t.signal, t.failure_class) {
            (Some(0), _, None) => "exit 0".to_owned(),
            (Some(code), _, Some(class)) => format!("{class}, exit {code}"),
            (None, Some(sig), Some(class)) => format!("{class}, signal {sig}"),
            (_, _, Some(class)) => class.to_string(),
            _ => "-".to_owned(),
        };
        println!(
            "{:<width$}  {:<8}  {:>7}  {:<14}  {}",
            t.step,
            t.state.as_str(),
            t.attempt,
            end,
            t.log_uri.as_deref().unwrap_or("-")
        );
        if let Some(reason) = &t.reason {
            println!("{:<width$}  {reason}", "");
        }
    }
    Ok(())
}

/// Runs `taskctl export`.
pub async fn export(global: &GlobalArgs, args: &ExportArgs) -> Result<()> {
    let store = connect::open(global).await?;
    let meta = connect::step(&store, &args.step).await?;
    // A file is written beside its destination and renamed into place, so
    // an interrupted export leaves no half file under that name.
    let (sink, temp): (Box<dyn Write>, Option<tempfile::NamedTempFile>) = match &args.output {
        Some(path) => {
            let dir = path
                .parent()
                .filter(|d| !d.as_os_str().is_empty())
                .unwrap_or_else(|| std::path::Path::new("."));
            let temp = tempfile::NamedTempFile::new_in(dir)
                .with_context(|| format!("cannot write in {}", dir.display()))?;
            (Box::new(temp.reopen()?), Some(temp))
        }
        None => (Box::new(std::io::stdout().lock()), None),
    };
    let mut out = BufWriter::new(sink);
    if matches!(args.format, ExportFormat::Tsv) {
        writeln!(
            out,
            "task_id\tstate\tattempts\texit_code\tfailure_class\tduration_s\tlog_uri"
        )?;
    }
    // A page of up to PARALLEL shards at a time: memory holds at most
    // PARALLEL pages, whatever the step's size.
    let mut rows = 0u64;
    let mut cursors: Vec<(u16, Option<String>)> = (0..meta.shards).map(|s| (s, None)).collect();
    while !cursors.is_empty() {
        let batch: Vec<(u16, Option<String>)> =
            cursors.drain(..PARALLEL.min(cursors.len())).collect();
        let pages = futures::future::join_all(
            batch
                .iter()
                .map(|(shard, after)| store.shard_page(&meta, *shard, after.as_deref(), PAGE)),
        )
        .await;
        for ((shard, _), page) in batch.into_iter().zip(pages) {
            let TaskPage { tasks, next } = page?;
            for t in &tasks {
                write_row(&mut out, t, args.format)?;
                rows += 1;
            }
            if let Some(next) = next {
                cursors.push((shard, Some(next)));
            }
        }
    }
    out.flush()?;
    drop(out);
    if let (Some(temp), Some(path)) = (temp, &args.output) {
        temp.persist(path)
            .with_context(|| format!("cannot write {}", path.display()))?;
        eprintln!(
            "wrote {rows} tasks of step '{}' to {}",
            meta.step,
            path.display()
        );
    }
    Ok(())
}

fn write_row(out: &mut impl Write, t: &TaskSummary, format: ExportFormat) -> Result<()> {
    let duration = t.duration().map(|d| d.as_secs_f64());
    match format {
        ExportFormat::Jsonl => {
            let mut line = serde_json::to_value(t)?;
            line["duration_s"] = serde_json::json!(duration);
            writeln!(out, "{}", serde_json::to_string(&line)?)?;
        }
        ExportFormat::Tsv => {
            let opt = |v: Option<String>| v.unwrap_or_default();
            writeln!(
                out,
                "{}\t{}\t{}\t{}\t{}\t{}\t{}",
                tsv_field(&t.task_id),
                t.state.as_str(),
                t.attempt,
                opt(t.exit_code.map(|c| c.to_string())),
                opt(t.failure_class.map(|c| c.to_string())),
                opt(duration.map(|d| format!("{d:.3}"))),
                tsv_field(t.log_uri.as_deref().unwrap_or_default()),
            )?;
        }
    }
    Ok(())
}

/// A value as one TSV field: tabs and line breaks would split it.
fn tsv_field(v: &str) -> String {
    v.replace(['\t', '\n', '\r'], " ")
}
