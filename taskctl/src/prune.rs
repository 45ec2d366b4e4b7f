//! `taskctl prune`: removes a step's tasks that finished `done` long ago,
//! after writing them whole to a JSON Lines file when asked, with their
//! counts taken off in the same writes. Read from the state index one page
//! of one shard at a time, never the table; memory holds one page.

use std::io::Write as _;
use std::time::Duration;

use anyhow::{Context, Result};
use serde::Serialize;
use taskfleet::model::TaskState;
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
                .in_state(&meta, shard, TaskState::Done, before, cursor.as_ref(), PAGE)
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

/// What `delete-step --json` prints.
#[derive(Debug, Serialize)]
struct Deleted {
    step: String,
    dry_run: bool,
    /// Tasks the step held, as counted before (removed, or with
    /// --dry-run, that would be).
    tasks: u64,
    /// Of those, running when the command began.
    running: u64,
    /// Removed.
    removed: usize,
}

/// Runs `taskctl delete-step`: refuses a step other steps name (they wait
/// for its tasks, or escalate to it) and, without `--force`, one whose
/// tasks run; removes its tasks a page of a shard at a time, each with its
/// counts (an interrupted delete leaves exact counts and is run again),
/// then its counters, load records and the step itself.
pub async fn delete_step(global: &GlobalArgs, args: &crate::cli::DeleteStepArgs) -> Result<()> {
    let store = connect::open(global).await?;
    let meta = connect::step(&store, &args.step).await?;
    let named_by: Vec<String> = store
        .steps()
        .await?
        .into_iter()
        .filter(|other| other.step != meta.step)
        .filter(|other| {
            other.after.contains(&meta.step)
                || taskfleet::rules::escalation_steps(&other.settings.rules).contains(&meta.step)
        })
        .map(|other| other.step)
        .collect();
    if !named_by.is_empty() {
        anyhow::bail!(
            "step '{}' is named by step(s) {} (--after or escalate-to): their tasks wait for or run on its tasks; delete those steps first; nothing was deleted",
            meta.step,
            named_by.join(", ")
        );
    }
    let status = store
        .status(Some(&meta.step))
        .await?
        .into_iter()
        .next()
        .unwrap_or_default();
    if status.running > 0 && !args.force && !args.dry_run {
        anyhow::bail!(
            "step '{}' has {} running task(s); stop its workers (taskctl stop, or cancel --step) and try again, or pass --force to delete it anyway (its workers then lose their tasks and stop their scripts); nothing was deleted",
            meta.step,
            status.running
        );
    }
    let mut report = Deleted {
        step: meta.step.clone(),
        dry_run: args.dry_run,
        tasks: status.total,
        running: status.running,
        removed: 0,
    };
    if !args.dry_run {
        // Again while tasks are left: one may have changed state (and
        // index partition) while its partition was read.
        for _ in 0..DELETE_ROUNDS {
            report.removed += remove_all_tasks(&store, &meta).await?;
            let left = store.status(Some(&meta.step)).await?;
            if left.first().is_none_or(|s| s.total == 0) {
                break;
            }
        }
        store.remove_step(&meta).await?;
    }
    if args.json {
        println!("{}", serde_json::to_string_pretty(&report)?);
    } else if args.dry_run {
        println!(
            "step '{}' and its {} task(s) ({} running) would be deleted (--dry-run: nothing changed)",
            report.step, report.tasks, report.running
        );
    } else {
        println!(
            "deleted step '{}': {} task(s), its counters and load records",
            report.step, report.removed
        );
    }
    Ok(())
}

/// Passes over a step's tasks that `delete-step` makes before it gives up.
const DELETE_ROUNDS: usize = 3;

/// Removes every task of `meta` found in the state index, a page of a
/// shard of a state at a time; returns how many.
async fn remove_all_tasks(
    store: &taskfleet::store::Store,
    meta: &taskfleet::model::StepMeta,
) -> Result<usize> {
    let before = Timestamp::from_millis(i64::MAX);
    let mut removed = 0;
    for state in TaskState::ALL {
        for shard in 0..meta.shards {
            let mut cursor = None;
            loop {
                let (tasks, next) = store
                    .in_state(meta, shard, state, before, cursor.as_ref(), PAGE)
                    .await?;
                if !tasks.is_empty() {
                    removed += store.prune(meta, &tasks).await?;
                }
                match next {
                    Some(c) => cursor = Some(c),
                    None => break,
                }
            }
        }
    }
    Ok(removed)
}
