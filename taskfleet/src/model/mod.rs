//! What a task, a step and a status report are.
//!
//! These are plain data: no store, no I/O. Field names are the attribute
//! names of the task table (see [`crate::schema::attr`]); a unit test in
//! `schema` checks that the two agree.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::time::Timestamp;

mod report;
mod step;

pub use report::{FailedTask, StepStatus, TaskPage, TaskSummary};
pub use step::{EXPIRY_SLOTS, GitState, LoadLock, LoadRecord, StepMeta, StepSettings};

/// Where a task is in its life. See the task contract for the transitions.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum TaskState {
    /// Waits for tasks of other steps (dependencies) to be done.
    Waiting,
    /// Claimable.
    Pending,
    /// Claimed by one (owner, attempt) holding a lease.
    Running,
    /// Finished with exit code 0.
    Done,
    /// Out of attempts, or failed in a way that is not retried.
    Failed,
    /// Put aside by an operator (`taskctl cancel`): it does not run.
    Cancelled,
}

impl TaskState {
    /// Every state, in the order status reports show them.
    pub const ALL: [TaskState; 6] = [
        TaskState::Waiting,
        TaskState::Pending,
        TaskState::Running,
        TaskState::Done,
        TaskState::Failed,
        TaskState::Cancelled,
    ];

    /// The name stored in the table and shown to users.
    pub const fn as_str(self) -> &'static str {
        match self {
            TaskState::Waiting => "waiting",
            TaskState::Pending => "pending",
            TaskState::Running => "running",
            TaskState::Done => "done",
            TaskState::Failed => "failed",
            TaskState::Cancelled => "cancelled",
        }
    }
}

impl std::fmt::Display for TaskState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Why an attempt did not end `done`. Retry rules are per class.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum FailureClass {
    /// The script exited non-zero.
    Exit,
    /// The script was killed by a signal it did not ask for.
    Signal,
    /// The step's timeout killed the script.
    Timeout,
    /// The owner disappeared; its lease expired and another worker reclaimed
    /// the task.
    Lost,
    /// The worker was interrupted (spot notice, shutdown) and released the
    /// task. Not the task's fault: does not use up an attempt.
    Interrupted,
    /// The script could not be started at all.
    Launch,
    /// The worker's spot instance was being reclaimed by EC2; the task was
    /// released. Not the task's fault: does not use up an attempt.
    Spot,
    /// The worker's host could not prepare the attempt (disk full, a
    /// directory it cannot write). Not the task's fault: the task is
    /// released without using an attempt, and the worker stops.
    Host,
    /// A task this one waits for (`load --after`) failed; this one never
    /// ran. Retrying the upstream task puts it back to `waiting`. (On a
    /// cancelled task: the upstream task was cancelled.)
    Upstream,
    /// An operator cancelled the task while it ran (`taskctl cancel`): its
    /// owner stopped the script and set it aside. Not an attempt's failure.
    Cancelled,
}

impl FailureClass {
    /// The name stored in the table.
    pub const fn as_str(self) -> &'static str {
        match self {
            FailureClass::Exit => "exit",
            FailureClass::Signal => "signal",
            FailureClass::Timeout => "timeout",
            FailureClass::Lost => "lost",
            FailureClass::Interrupted => "interrupted",
            FailureClass::Launch => "launch",
            FailureClass::Host => "host",
            FailureClass::Spot => "spot",
            FailureClass::Upstream => "upstream",
            FailureClass::Cancelled => "cancelled",
        }
    }
}

impl std::fmt::Display for FailureClass {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// One finished attempt, kept in the task's bounded history.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AttemptRecord {
    /// The attempt number (the fencing token of that run).
    pub attempt: u32,
    /// Who ran it: instance or host id, and worker id.
    pub owner: String,
    /// When it was claimed.
    pub started_at: Timestamp,
    /// When it ended (or was found dead).
    pub finished_at: Timestamp,
    /// The state the task moved to after this attempt.
    pub outcome: TaskState,
    /// Exit code, if the script exited.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub exit_code: Option<i32>,
    /// Signal number, if the script was killed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub signal: Option<i32>,
    /// Why it failed, if it did.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub failure_class: Option<FailureClass>,
    /// Where the attempt's full log is.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub log_uri: Option<String>,
    /// Agent version, host and script digest of the attempt.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub provenance: Option<String>,
}

/// A task as stored: one unit of work of a step, usually one sample.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Task {
    /// The step the task belongs to.
    pub step: String,
    /// The task's id within its step (from the sheet's id column).
    pub task_id: String,
    /// Where the task is in its life.
    pub state: TaskState,
    /// Number of claims so far; the current one is the fencing token.
    pub attempt: u32,
    /// Failed attempts that count against the step's attempt limit.
    /// Interruptions (spot, shutdown) do not count.
    #[serde(default)]
    pub failed_attempts: u32,
    /// The shell text the agent runs. Row values never appear in it.
    #[serde(rename = "Task_Script")]
    pub script: String,
    /// SHA-256 of the script, hex; part of every attempt's provenance.
    pub script_digest: String,
    /// The sheet row: environment variable name to value.
    pub env: BTreeMap<String, String>,
    /// The column each variable came from, where it is written otherwise
    /// than the variable (`Sample Name`, dsub's `--input VCF_FILE`).
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub columns: BTreeMap<String, String>,
    /// When the task was loaded.
    pub created_at: Timestamp,
    /// Last write to the task.
    pub updated_at: Timestamp,
    /// When a `pending` task becomes claimable again (retry backoff).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ready_at: Option<Timestamp>,
    /// Current owner while running.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub owner: Option<String>,
    /// Absolute lease expiry while running.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub lease_expires_at: Option<Timestamp>,
    /// When the current or last attempt started.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub started_at: Option<Timestamp>,
    /// When the task reached `done` or `failed`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub finished_at: Option<Timestamp>,
    /// Exit code of the last attempt.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub exit_code: Option<i32>,
    /// Signal that ended the last attempt.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub signal: Option<i32>,
    /// Failure class of the last failed attempt.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub failure_class: Option<FailureClass>,
    /// The last few KB of the last attempt's output (lossy UTF-8).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub output_tail: Option<String>,
    /// Where the last attempt's full log is.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub log_uri: Option<String>,
    /// Who last put the task back from `failed` (`taskctl retry`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub retried_by: Option<String>,
    /// When.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub retried_at: Option<Timestamp>,
    /// Who cancelled the task (`taskctl cancel`); on a running task, that
    /// its owner is asked to stop it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cancelled_by: Option<String>,
    /// When.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cancelled_at: Option<Timestamp>,
    /// The last attempts, oldest first, bounded.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub history: Vec<AttemptRecord>,
    /// The steps whose task of the same id this one waits for (`load
    /// --after`), as loaded.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub after: Vec<String>,
    /// Of those, the ones not `done` yet, while the task is `waiting` (or
    /// `failed` because one of them failed).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub waiting_on: Vec<String>,
    /// The steps whose task of the same id waits for this one: the worker
    /// that ends this task moves them on, in the same write.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub dependents: Vec<String>,
    /// Why a task waits (an upstream task that does not exist) or failed
    /// without running (the upstream task that failed).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    /// The step a retry rule moved the task's run to (`--retry-on
    /// ...:escalate-to=STEP`): the task waits for that step's task of the
    /// same id and takes its outcome.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub escalated_to: Option<String>,
    /// When a `done` task expires, in epoch seconds (the table's TTL
    /// attribute): from then on it is gone from counts and reads, and the
    /// table deletes it. Set by the finish, from the step's
    /// `expire_after`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub expires_at: Option<i64>,
}

impl Task {
    /// Whether the task has expired at `now` (it is then treated as gone).
    pub fn expired(&self, now: Timestamp) -> bool {
        self.expires_at
            .is_some_and(|at| Timestamp::from_secs(at) <= now)
    }
}

/// A task to be loaded: its id and its sheet row as environment variables.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NewTask {
    /// The task id (from the id column).
    pub task_id: String,
    /// Sheet line the row starts on, for messages.
    pub line: u64,
    /// Environment variable name to value.
    pub env: BTreeMap<String, String>,
}
