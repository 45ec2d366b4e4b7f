//! `taskctl retry`: failed tasks back to pending, with a fresh attempt
//! budget, by one fenced write each (a task that changed since it was read
//! is left alone). No client needs to stay running: the workers of the
//! step claim them as they claim any pending task.

use anyhow::{Result, bail};
use serde::Serialize;
use taskfleet::model::{FailureClass, TaskState};
use taskfleet::store::{ReplaceOutcome, TaskStore};

use crate::cli::{GlobalArgs, RetryArgs};
use crate::connect;

/// One task to retry.
#[derive(Debug, Serialize)]
struct Candidate {
    task_id: String,
    attempt: u32,
    exit_code: Option<i32>,
    failure_class: Option<FailureClass>,
}

/// What `retry --json` prints.
#[derive(Debug, Serialize)]
struct Report {
    step: String,
    dry_run: bool,
    /// Retried (or, with --dry-run, would be).
    tasks: Vec<Candidate>,
    /// Left alone: they changed since they were read.
    changed: Vec<String>,
    /// Named with --task but not failed.
    not_failed: Vec<(String, TaskState)>,
    /// Whether --limit cut the list of failed tasks short.
    limited: bool,
}

/// Runs `taskctl retry`.
pub async fn retry(global: &GlobalArgs, args: &RetryArgs) -> Result<()> {
    let store = connect::open(global).await?;
    let meta = connect::step(&store, &args.step).await?;
    let mut report = Report {
        step: meta.step.clone(),
        dry_run: args.dry_run,
        tasks: Vec::new(),
        changed: Vec::new(),
        not_failed: Vec::new(),
        limited: false,
    };
    let mut found = Vec::new();
    if args.tasks.is_empty() {
        let failed = store.failed(Some(&meta.step), args.limit).await?;
        report.limited = failed.len() >= args.limit;
        found.extend(failed.into_iter().map(|f| Candidate {
            task_id: f.task_id,
            attempt: f.attempt,
            exit_code: f.exit_code,
            failure_class: f.failure_class,
        }));
    } else {
        for id in &args.tasks {
            let Some(task) = store.task(&meta.step, id).await? else {
                bail!(
                    "step '{}' has no task '{id}'; nothing was retried",
                    meta.step
                );
            };
            if matches!(task.state, TaskState::Failed | TaskState::Cancelled) {
                found.push(Candidate {
                    task_id: task.task_id,
                    attempt: task.attempt,
                    exit_code: task.exit_code,
                    failure_class: task.failure_class,
                });
            } else {
                report.not_failed.push((task.task_id, task.state));
            }
        }
    }
    found.retain(|c| {
        args.class
            .is_none_or(|class| c.failure_class == Some(class))
            && args.exit_code.is_none_or(|code| c.exit_code == Some(code))
    });
    let by = who();
    for c in found {
        if !args.dry_run
            && store.retry(&meta, &c.task_id, c.attempt, &by).await? == ReplaceOutcome::Changed
        {
            report.changed.push(c.task_id);
            continue;
        }
        report.tasks.push(c);
    }
    if args.json {
        println!("{}", serde_json::to_string_pretty(&report)?);
    } else {
        print_report(&report);
    }
    Ok(())
}

fn print_report(r: &Report) {
    let verb = if r.dry_run { "would retry" } else { "retried" };
    println!(
        "{verb} {} failed task{} of step '{}'",
        r.tasks.len(),
        if r.tasks.len() == 1 { "" } else { "s" },
        r.step
    );
    for c in &r.tasks {
        let how = match (c.failure_class, c.exit_code) {
            (Some(class), Some(code)) => format!("{class}, exit {code}"),
            (Some(class), None) => class.to_string(),
            (None, _) => "-".to_owned(),
        };
        println!("  {} (after attempt {}: {how})", c.task_id, c.attempt);
    }
    for id in &r.changed {
        println!("  {id}: left alone, it changed meanwhile");
    }
    for (id, state) in &r.not_failed {
        println!("  {id}: left alone, it is {state}");
    }
    if r.limited {
        println!("more failed tasks may remain beyond --limit; run it again");
    }
}

/// Who retries, for the task's record: `user@host`.
pub(crate) fn who() -> String {
    format!(
        "{}@{}",
        crate::provenance::user(),
        crate::provenance::host()
    )
}
