//! `taskctl prune`: removes a step's tasks that finished `done` long ago,
//! after writing them whole to a JSON Lines file when asked, with their
//! counts taken off in the same writes. Read from the state index one page
//! of one shard at a time, never the table; memory holds one page.

use std::io::Write as _;
use std::time::Duration;

use anyhow::{Context, Result};
use serde::Serialize;
use taskfleet::store::TaskStore;
use taskfleet::time::Timestamp;

use crate::cli::{GlobalArgs, PruneArgs};
use crate::connect;

/// Tasks read (and removed) at a time.
const PAGE: usize = 500;

/// What `prune --json` prints.
#[derive(Debug, Serialize)]
struct Report {
    step: String,
    dry_run: bool,
    /// Tasks finished before this instant were pruned.
    finished_before: Timestamp,
    /// Found done and old enough.
    found: usize,
    /// Removed (none with --dry-run).
    removed: usize,
    /// Left alone: they changed since they were read.
    changed: usize,
    /// Where the tasks were written, if anywhere.
    export: Option<String>,
}

/// Runs `taskctl prune`.
pub async fn prune(global: &GlobalArgs, args: &PruneArgs) -> Result<()> {
    let store = connect::open(global).await?;
    let meta = connect::step(&store, &args.step).await?;
    let before = Timestamp::from_millis(
        Timestamp::now().as_millis()
            - i64::try_from(args.done_older_than.as_millis()).unwrap_or(i64::MAX),
    );
    let mut export = match &args.export {
        Some(path) if !args.dry_run => Some(std::io::BufWriter::new(
            std::fs::OpenOptions::new()
                .create(true)
                .append(true)
                .open(path)
                .with_context(|| {
                    format!(
                        "cannot open {} to write the pruned tasks to",
                        path.display()
                    )
                })?,
        )),
        _ => None,
    };
    let mut report = Report {
        step: meta.step.clone(),
        dry_run: args.dry_run,
        finished_before: before,
        found: 0,
        removed: 0,
        changed: 0,
        export: args.export.as_ref().map(|p| p.display().to_string()),
    };
    for shard in 0..meta.shards {
        let mut cursor = None;
        loop {
            let (tasks, next) = store
                .done_before(&meta, shard, before, cursor.as_ref(), PAGE)
                .await?;
            report.found += tasks.len();
            if !args.dry_run && !tasks.is_empty() {
                // Written and on disk before anything is removed.
                if let (Some(out), Some(path)) = (export.as_mut(), &args.export) {
                    for t in &tasks {
                        serde_json::to_writer(&mut *out, t)?;
                        out.write_all(b"\n")?;
                    }
                    out.flush()?;
                    out.get_ref()
                        .sync_data()
                        .with_context(|| format!("cannot write {}", path.display()))?;
                }
                let removed = store.prune(&meta, &tasks).await?;
                report.removed += removed;
                report.changed += tasks.len() - removed;
            }
            match next {
                Some(c) => cursor = Some(c),
                None => break,
            }
        }
    }
    if args.json {
        println!("{}", serde_json::to_string_pretty(&report)?);
        return Ok(());
    }
    let age = humantime::format_duration(Duration::from_secs(args.done_older_than.as_secs()));
    if args.dry_run {
        println!(
            "{}: {} done task(s) finished more than {age} ago would be pruned (--dry-run: nothing changed)",
            report.step, report.found
        );
    } else {
        let to = report
            .export
            .as_deref()
            .map_or_else(String::new, |p| format!(", written to {p} first"));
        println!(
            "{}: pruned {} done task(s) finished more than {age} ago{to}",
            report.step, report.removed
        );
        if report.changed > 0 {
            println!(
                "{} changed since they were read (retried or run again) and were left alone",
                report.changed
            );
        }
    }
    Ok(())
}
