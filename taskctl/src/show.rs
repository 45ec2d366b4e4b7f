//! `taskctl show`: one task's whole record, or a step's settings and the
//! record of every load (where its sheet and script came from).

use std::fmt::Write as _;

use anyhow::Result;
use taskfleet::model::{LoadRecord, StepMeta, Task, TaskState};
use taskfleet::store::TaskStore;

use crate::cli::{GlobalArgs, ShowArgs};
use crate::connect;

/// Load records `show --step` prints.
const LOADS_SHOWN: usize = 20;

/// Runs `taskctl show`.
pub async fn show(global: &GlobalArgs, args: &ShowArgs) -> Result<()> {
    let store = connect::open(global).await?;
    let (step, task) = match (&args.step_flag, &args.step, &args.task) {
        (Some(step), None, None) | (None, Some(step), None) => (step, None),
        (None, Some(step), Some(task)) => (step, Some(task)),
        _ => anyhow::bail!("give STEP TASK for a task, or --step STEP for the step"),
    };
    let Some(task_id) = task else {
        let meta = connect::step(&store, step).await?;
        let loads = store.loads(step, LOADS_SHOWN).await?;
        if args.json {
            let out = serde_json::json!({ "step": meta, "loads": loads });
            println!("{}", serde_json::to_string_pretty(&out)?);
        } else {
            print!("{}", step_text(&meta, &loads));
        }
        return Ok(());
    };
    let Some(task) = store.task(step, task_id).await? else {
        anyhow::bail!(
            "step '{step}' has no task '{task_id}'; `taskctl status --step {step}` shows what it has"
        );
    };
    if args.json {
        println!("{}", serde_json::to_string_pretty(&task)?);
    } else {
        print!("{}", task_text(&task));
    }
    Ok(())
}

/// What a task waits for and what waits for it (`load --after`).
fn dependency_lines(out: &mut String, t: &Task) {
    if !t.after.is_empty() {
        let waiting = if t.waiting_on.is_empty() {
            "all done".to_owned()
        } else {
            format!("waiting on {}", t.waiting_on.join(", "))
        };
        let _ = writeln!(out, "after:           {} ({waiting})", t.after.join(", "));
    }
    if !t.dependents.is_empty() {
        let _ = writeln!(out, "dependents:      {}", t.dependents.join(", "));
    }
    if let Some(reason) = &t.reason {
        let _ = writeln!(out, "reason:          {reason}");
    }
    if let Some(to) = &t.escalated_to {
        let _ = writeln!(
            out,
            "escalated to:    {to} (taskctl show {to} {})",
            t.task_id
        );
    }
    if let Some(at) = t.expires_at {
        let _ = writeln!(
            out,
            "expires:         {} (load --expire-after)",
            taskfleet::time::Timestamp::from_secs(at)
        );
    }
}

/// A step's settings and its loads, newest first, as text.
pub fn step_text(meta: &StepMeta, loads: &[LoadRecord]) -> String {
    let mut out = String::new();
    let s = &meta.settings;
    let _ = writeln!(out, "step:            {}", meta.step);
    let _ = writeln!(out, "created:         {}", meta.created_at);
    let _ = writeln!(out, "shards:          {}", meta.shards);
    let _ = writeln!(out, "max attempts:    {}", s.max_attempts);
    let _ = writeln!(
        out,
        "lease:           {}",
        humantime::format_duration(s.lease)
    );
    let _ = writeln!(
        out,
        "timeout:         {}",
        s.timeout.map_or_else(
            || "-".to_owned(),
            |t| humantime::format_duration(t).to_string()
        )
    );
    let _ = writeln!(
        out,
        "expire after:    {}",
        s.expire_after.map_or_else(
            || "never (done tasks stay until pruned)".to_owned(),
            |t| format!("{} (done tasks)", humantime::format_duration(t))
        )
    );
    if s.rules.is_empty() {
        let _ = writeln!(
            out,
            "retry rules:     none (failures retried up to max attempts)"
        );
    }
    for (i, rule) in s.rules.iter().enumerate() {
        let label = if i == 0 { "retry rules:" } else { "" };
        let _ = writeln!(out, "{label:<17}{rule}");
    }
    if !meta.after.is_empty() {
        let _ = writeln!(
            out,
            "after:           {} (each task waits for its sample's task there)",
            meta.after.join(", ")
        );
    }
    if loads.is_empty() {
        let _ = writeln!(out, "loads:           none recorded");
    }
    for l in loads {
        let _ = writeln!(out, "load at {}:", l.at);
        let _ = writeln!(out, "  by:            {} on {}", l.user, l.host);
        let _ = writeln!(out, "  command:       {}", shell_words(&l.command));
        let _ = writeln!(
            out,
            "  sheet:         {} ({} rows, sha256:{})",
            l.sheet, l.rows, l.sheet_sha256
        );
        let _ = writeln!(
            out,
            "  tasks:         {} loaded, {} existing left alone, {} replaced",
            l.loaded, l.skipped_existing, l.replaced
        );
        let _ = writeln!(
            out,
            "  script:        {} (sha256:{})",
            l.script_file.as_deref().unwrap_or("--command"),
            l.script_sha256
        );
        match &l.git {
            Some(g) if !g.tracked => {
                let _ = writeln!(
                    out,
                    "  git:           {} is not committed (HEAD {})",
                    g.path, g.commit
                );
            }
            Some(g) => {
                let _ = writeln!(
                    out,
                    "  git:           {} at {}{}",
                    g.path,
                    g.commit,
                    if g.dirty {
                        ", with uncommitted changes"
                    } else {
                        ""
                    }
                );
            }
            None => {
                let _ = writeln!(out, "  git:           -");
            }
        }
    }
    out
}

/// A command line as one could type it again.
fn shell_words(words: &[String]) -> String {
    words
        .iter()
        .map(|w| {
            let plain = !w.is_empty()
                && w.chars()
                    .all(|c| c.is_ascii_alphanumeric() || "-_./=:,@%+".contains(c));
            if plain {
                w.clone()
            } else {
                format!("'{}'", w.replace('\'', "'\\''"))
            }
        })
        .collect::<Vec<_>>()
        .join(" ")
}

/// Who cancelled the task, or asked its worker to stop it, and when.
fn cancel_line(out: &mut String, t: &Task) {
    if let Some(at) = t.cancelled_at {
        let by = t.cancelled_by.as_deref().unwrap_or("-");
        let what = if t.state == TaskState::Running {
            "cancel asked"
        } else {
            "cancelled"
        };
        let _ = writeln!(
            out,
            "{what}:{:width$}by {by} at {at}",
            "",
            width = 16 - what.len() - 1
        );
    }
}

/// A task's record as text.
pub fn task_text(t: &Task) -> String {
    let mut out = String::new();
    let opt = |v: Option<String>| v.unwrap_or_else(|| "-".to_owned());
    let _ = writeln!(out, "step:            {}", t.step);
    let _ = writeln!(out, "task:            {}", t.task_id);
    let _ = writeln!(out, "state:           {}", t.state);
    let _ = writeln!(
        out,
        "attempt:         {} ({} failed)",
        t.attempt, t.failed_attempts
    );
    let _ = writeln!(out, "owner:           {}", opt(t.owner.clone()));
    let _ = writeln!(
        out,
        "lease expires:   {}",
        opt(t.lease_expires_at.map(|v| v.to_string()))
    );
    let _ = writeln!(out, "created:         {}", t.created_at);
    let _ = writeln!(
        out,
        "started:         {}",
        opt(t.started_at.map(|v| v.to_string()))
    );
    let _ = writeln!(
        out,
        "finished:        {}",
        opt(t.finished_at.map(|v| v.to_string()))
    );
    let _ = writeln!(
        out,
        "exit code:       {}",
        opt(t.exit_code.map(|v| v.to_string()))
    );
    let _ = writeln!(
        out,
        "signal:          {}",
        opt(t.signal.map(|v| v.to_string()))
    );
    let _ = writeln!(
        out,
        "failure class:   {}",
        opt(t.failure_class.map(|v| v.to_string()))
    );
    let _ = writeln!(out, "log:             {}", opt(t.log_uri.clone()));
    dependency_lines(&mut out, t);
    cancel_line(&mut out, t);
    if let (Some(by), Some(at)) = (&t.retried_by, t.retried_at) {
        let _ = writeln!(out, "retried:         by {by} at {at}");
    }
    let _ = writeln!(out, "script digest:   {}", t.script_digest);
    let _ = writeln!(out, "environment:");
    for (k, v) in &t.env {
        // The column it came from, where that is written otherwise (a
        // dsub column shows its kind: `--input VCF_FILE`).
        match t.columns.get(k) {
            Some(column) => {
                let _ = writeln!(out, "  {k}={v}    (column '{column}')");
            }
            None => {
                let _ = writeln!(out, "  {k}={v}");
            }
        }
    }
    let _ = writeln!(out, "script:");
    for line in t.script.lines() {
        let _ = writeln!(out, "  {line}");
    }
    if !t.history.is_empty() {
        let _ = writeln!(out, "history:");
        for a in &t.history {
            let _ = writeln!(
                out,
                "  attempt {} by {}: {} -> {} ({}{})",
                a.attempt,
                a.owner,
                a.started_at,
                a.finished_at,
                a.outcome,
                a.failure_class
                    .map(|c| format!(", {c}"))
                    .unwrap_or_default()
            );
            if let Some(log) = &a.log_uri {
                let _ = writeln!(out, "    log:        {log}");
            }
            if let Some(p) = &a.provenance {
                let _ = writeln!(out, "    provenance: {p}");
            }
        }
    }
    if let Some(tail) = &t.output_tail {
        let _ = writeln!(out, "output tail:");
        for line in tail.lines() {
            let _ = writeln!(out, "  | {line}");
        }
    }
    out
}
