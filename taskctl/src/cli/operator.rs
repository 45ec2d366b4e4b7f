//! Arguments of the commands that change tasks on an operator's word:
//! `retry`, `cancel`, `prune`, `delete-step`.

use std::time::Duration;

use clap::Args;

/// `taskctl prune`.
#[derive(Debug, Args)]
#[command(
    after_help = "Examples:\n  taskctl prune --step align --done-older-than 30d --dry-run\n  taskctl prune --step align --done-older-than 30d --export align-done.jsonl"
)]
pub struct PruneArgs {
    /// The step.
    #[arg(long)]
    pub step: String,
    /// Prune done tasks that finished longer ago than this (e.g. 30d).
    #[arg(long, value_parser = humantime::parse_duration, value_name = "AGE")]
    pub done_older_than: Duration,
    /// Append each task, whole, as one JSON line to FILE, on disk before
    /// it is removed.
    #[arg(long, value_name = "FILE")]
    pub export: Option<std::path::PathBuf>,
    /// Count what would be pruned; change nothing, write no file.
    #[arg(long)]
    pub dry_run: bool,
    /// Print the summary as JSON.
    #[arg(long)]
    pub json: bool,
}

/// `taskctl retry`.
#[derive(Debug, Args)]
#[command(
    after_help = "Examples:\n  taskctl retry --step align --dry-run           what would be retried: every failed task\n  taskctl retry --step align --exit 137          those killed for memory, after raising it\n  taskctl retry --step align --class lost        those whose worker vanished\n  taskctl retry --step align --task HG00096      one task"
)]
pub struct RetryArgs {
    /// The step.
    #[arg(long)]
    pub step: String,
    /// Only these tasks (repeatable); each must be failed or cancelled
    /// (a cancelled task is put back only when named).
    #[arg(long = "task", value_name = "ID")]
    pub tasks: Vec<String>,
    /// Only failed tasks of this failure class (exit, signal, timeout,
    /// lost, launch, ...).
    #[arg(long, value_name = "CLASS", value_parser = parse_class)]
    pub class: Option<taskfleet::model::FailureClass>,
    /// Only failed tasks whose last attempt exited with this code.
    #[arg(long = "exit", value_name = "CODE")]
    pub exit_code: Option<i32>,
    /// At most this many failed tasks, newest first (run again for more).
    #[arg(long, default_value_t = 10_000)]
    pub limit: usize,
    /// List what would be retried; change nothing.
    #[arg(long)]
    pub dry_run: bool,
    /// Print JSON.
    #[arg(long)]
    pub json: bool,
}

fn parse_class(text: &str) -> Result<taskfleet::model::FailureClass, String> {
    serde_json::from_value(serde_json::Value::String(text.to_owned())).map_err(|_| {
        format!(
            "'{text}' is not a failure class: exit, signal, timeout, lost, interrupted, launch, spot, host, upstream, cancelled"
        )
    })
}

/// `taskctl cancel`.
#[derive(Debug, Args)]
#[command(
    after_help = "Examples:\n  taskctl cancel --step align --dry-run          what would be cancelled: every task not finished\n  taskctl cancel --step align --task HG00096     one sample (its later steps with it)\n  taskctl retry --step align --task HG00096      undo: back to pending"
)]
pub struct CancelArgs {
    /// The step.
    #[arg(long)]
    pub step: String,
    /// Only these tasks (repeatable); without it, every pending, waiting
    /// and running task of the step.
    #[arg(long = "task", value_name = "ID")]
    pub tasks: Vec<String>,
    /// List what would be cancelled; change nothing.
    #[arg(long)]
    pub dry_run: bool,
    /// Print JSON.
    #[arg(long)]
    pub json: bool,
}

/// `taskctl delete-step`.
#[derive(Debug, Args)]
#[command(
    after_help = "Examples:\n  taskctl delete-step align-test --dry-run   what would go\n  taskctl delete-step align-test             remove it, if nothing runs\n  taskctl delete-step align-test --force     even with tasks running (their workers lose them)"
)]
pub struct DeleteStepArgs {
    /// The step.
    pub step: String,
    /// Delete even while tasks of the step are running: their workers
    /// find them gone at their next renewal and stop their scripts.
    #[arg(long)]
    pub force: bool,
    /// Say what would be removed; change nothing.
    #[arg(long)]
    pub dry_run: bool,
    /// Print JSON.
    #[arg(long)]
    pub json: bool,
}
