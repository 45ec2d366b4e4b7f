//! What the reads report: a task in a line, a page of them, a step's
//! status and its failed tasks.

use std::time::Duration;

use serde::{Deserialize, Serialize};

use super::{FailureClass, Task, TaskState};
use crate::time::Timestamp;

/// One task in a line: where it stands, for `taskctl where` and `taskctl
/// export` (no script, row or history).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TaskSummary {
    /// The step.
    pub step: String,
    /// The task.
    pub task_id: String,
    /// Its state.
    pub state: TaskState,
    /// Attempts made (the last one's number).
    pub attempt: u32,
    /// Exit code of the last attempt.
    pub exit_code: Option<i32>,
    /// Signal of the last attempt.
    pub signal: Option<i32>,
    /// Why the last attempt failed.
    pub failure_class: Option<FailureClass>,
    /// When the last attempt started.
    pub started_at: Option<Timestamp>,
    /// When it ended.
    pub finished_at: Option<Timestamp>,
    /// Where its log is.
    pub log_uri: Option<String>,
    /// Why it waits, or failed without running (`load --after`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
}

impl TaskSummary {
    /// The fields of `task` a summary keeps.
    pub fn of(task: &Task) -> Self {
        Self {
            step: task.step.clone(),
            task_id: task.task_id.clone(),
            state: task.state,
            attempt: task.attempt,
            exit_code: task.exit_code,
            signal: task.signal,
            failure_class: task.failure_class,
            started_at: task.started_at,
            finished_at: task.finished_at,
            log_uri: task.log_uri.clone(),
            reason: task.reason.clone(),
        }
    }

    /// How long the last attempt ran, if it ended.
    pub fn duration(&self) -> Option<Duration> {
        match (self.started_at, self.finished_at) {
            (Some(start), Some(end)) if end >= start => Some(end.since(start)),
            _ => None,
        }
    }
}

/// A page of a shard's tasks in id order, and the id to go on after.
#[derive(Debug, Clone, Default)]
pub struct TaskPage {
    /// The tasks.
    pub tasks: Vec<TaskSummary>,
    /// Where the next page starts (after this id); `None` at the end.
    pub next: Option<String>,
}

/// Counts of one step, as `taskctl status` shows them.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct StepStatus {
    /// The step.
    pub step: String,
    /// All tasks loaded into the step.
    pub total: u64,
    /// Waiting for dependencies.
    pub waiting: u64,
    /// Claimable.
    pub pending: u64,
    /// Held by a worker.
    pub running: u64,
    /// Finished.
    pub done: u64,
    /// Out of attempts.
    pub failed: u64,
    /// Set aside by an operator (`taskctl cancel`).
    #[serde(default)]
    pub cancelled: u64,
    /// `done` of the tasks not cancelled, in percent.
    pub percent_done: f64,
    /// The step's settings.
    pub max_attempts: u32,
    /// The stored counters account for more tasks than were loaded: a
    /// counter is wrong and `taskctl recount` corrects it.
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    pub counts_drift: bool,
}

impl StepStatus {
    /// `done` as a percentage of the tasks that are to run (all but the
    /// cancelled ones); never above 100.
    pub fn percent(done: u64, total: u64, cancelled: u64) -> f64 {
        let to_run = total.saturating_sub(cancelled);
        if to_run == 0 {
            0.0
        } else {
            (100.0 * done as f64 / to_run as f64).min(100.0)
        }
    }

    /// Tasks not yet done, failed or cancelled. Not known to be zero while the
    /// counts drift.
    pub fn remaining(&self) -> u64 {
        self.waiting + self.pending + self.running + u64::from(self.counts_drift)
    }
}

/// A failed task as `taskctl status --failed` lists it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct FailedTask {
    /// The step.
    pub step: String,
    /// The task.
    pub task_id: String,
    /// Attempts made.
    pub attempt: u32,
    /// Exit code of the last attempt.
    pub exit_code: Option<i32>,
    /// Signal of the last attempt.
    pub signal: Option<i32>,
    /// Why it failed.
    pub failure_class: Option<FailureClass>,
    /// When it failed.
    pub finished_at: Option<Timestamp>,
    /// The end of its output (none for a step loaded with
    /// `--no-output-tail`).
    pub output_tail: Option<String>,
    /// Where its last attempt's log is.
    #[serde(default)]
    pub log_uri: Option<String>,
}
