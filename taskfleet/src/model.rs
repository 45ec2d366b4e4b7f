//! What a task, a step and a status report are.
//!
//! These are plain data: no store, no I/O. Field names are the attribute
//! names of the task table (see [`crate::schema::attr`]); a unit test in
//! `schema` checks that the two agree.

use std::collections::BTreeMap;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::time::Timestamp;

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

/// Settings of a step, stored once for the step.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct StepSettings {
    /// Attempts a task gets before it is `failed`.
    pub max_attempts: u32,
    /// Length of a lease; the owner renews it every third of this (more
    /// often on a short one).
    #[serde(with = "duration_ms")]
    pub lease: Duration,
    /// Optional wall-clock limit for one attempt.
    #[serde(
        default,
        with = "opt_duration_ms",
        skip_serializing_if = "Option::is_none"
    )]
    pub timeout: Option<Duration>,
    /// Whether the tail of each attempt's output is kept on the task
    /// (`taskctl status --failed` shows it). Off (`load
    /// --no-output-tail`), output stays in the log alone, for data that
    /// must not be copied into the table.
    #[serde(default = "yes", skip_serializing_if = "is_true")]
    pub output_tail: bool,
    /// What happens after a failed attempt, by exit code and class
    /// (`load --retry-on`, `--fail-on`); see [`crate::rules`].
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub rules: Vec<crate::rules::Rule>,
    /// How long a `done` task is kept after it finished (`load
    /// --expire-after`): then it leaves the step's counts and every read,
    /// and the table's TTL deletes it. See [`StepSettings::expiry_of`].
    #[serde(
        default,
        with = "opt_duration_ms",
        skip_serializing_if = "Option::is_none"
    )]
    pub expire_after: Option<Duration>,
}

/// Expiry times are rounded up to a whole slot of this many parts of the
/// `--expire-after` time (at least a second, at most a day), so that a
/// shard's counter item holds one expiry count per slot, not per task.
pub const EXPIRY_SLOTS: u64 = 30;

impl StepSettings {
    /// When a task of this step that finished `done` at `finished`
    /// expires, in epoch seconds (the TTL attribute's unit): `finished +
    /// expire_after`, rounded up to its slot ([`EXPIRY_SLOTS`]). A task
    /// expires at most a slot (a thirtieth of the time, at most a day)
    /// after the time asked for. `None`: the step's tasks do not expire.
    pub fn expiry_of(&self, finished: Timestamp) -> Option<i64> {
        let after = self.expire_after?.as_secs().max(1);
        let slot = i64::try_from((after / EXPIRY_SLOTS).clamp(1, 86_400)).unwrap_or(86_400);
        let at = finished
            .as_millis()
            .div_euclid(1000)
            .saturating_add(i64::try_from(after).unwrap_or(i64::MAX / 2));
        Some(at.div_euclid(slot).saturating_add(1).saturating_mul(slot))
    }
}

fn yes() -> bool {
    true
}

#[allow(clippy::trivially_copy_pass_by_ref)] // serde's signature
fn is_true(v: &bool) -> bool {
    *v
}

impl Default for StepSettings {
    fn default() -> Self {
        Self {
            max_attempts: 3,
            lease: Duration::from_secs(300),
            timeout: None,
            output_tail: true,
            rules: Vec::new(),
            expire_after: None,
        }
    }
}

/// A step as stored: its settings and how its tasks are spread.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct StepMeta {
    /// The step's name.
    pub step: String,
    /// Number of shards the step's tasks, index entries and counters are
    /// spread over. Fixed when the step is created.
    pub shards: u16,
    /// The step's settings.
    pub settings: StepSettings,
    /// When the step was created.
    pub created_at: Timestamp,
    /// Last change to the settings.
    pub updated_at: Timestamp,
    /// The first load of the step, while it runs (or when it died): it
    /// writes without a per-task condition and counts behind its writes,
    /// so no other load may write the step meanwhile.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub first_load: Option<LoadLock>,
    /// The steps this step's tasks wait for, sample by sample (`load
    /// --after`).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub after: Vec<String>,
}

/// What one `taskctl load` of a step was: where the sheet and the script
/// came from and who ran it, kept on the step (newest first in
/// `taskctl show --step`) so that a result can be traced back to its
/// inputs a year later.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LoadRecord {
    /// When the load finished writing.
    pub at: Timestamp,
    /// The user who ran it (`$USER`, else the uid).
    pub user: String,
    /// The host it ran on.
    pub host: String,
    /// The exact command line, one element per argument.
    pub command: Vec<String>,
    /// The sheet as given: a path, `s3://BUCKET/KEY` or `-`.
    pub sheet: String,
    /// SHA-256 of the sheet, hex.
    pub sheet_sha256: String,
    /// Rows in the sheet.
    pub rows: u64,
    /// New tasks written.
    pub loaded: u64,
    /// Rows whose task existed and was left alone.
    pub skipped_existing: u64,
    /// Existing tasks given the new script and row (`--replace`).
    #[serde(default)]
    pub replaced: u64,
    /// The script file, or `None` for `--command TEXT`.
    pub script_file: Option<String>,
    /// SHA-256 of the script text, hex (as on every task).
    pub script_sha256: String,
    /// The script file's git state, when it is in a git work tree.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub git: Option<GitState>,
}

/// Where a script file stands in git.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct GitState {
    /// The commit checked out (`HEAD`).
    pub commit: String,
    /// The file's path in the repository.
    pub path: String,
    /// Whether the file is committed (tracked) at all.
    pub tracked: bool,
    /// Whether what was loaded differs from the file at `HEAD`
    /// (uncommitted changes), byte for byte.
    pub dirty: bool,
}

/// Who holds a step's first load, and until when unless renewed.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LoadLock {
    /// `host:pid:nonce` of the loading process.
    pub holder: String,
    /// When the lock lapses if not renewed.
    pub until: Timestamp,
}

impl LoadLock {
    /// A lock for a load of this process, until `until`.
    pub fn new(until: Timestamp) -> Self {
        Self::for_process(std::process::id(), until)
    }

    /// A lock held by process `pid` of this host: `host:pidns:pid:nonce`,
    /// the PID namespace telling processes of two containers apart.
    pub fn for_process(pid: u32, until: Timestamp) -> Self {
        Self {
            holder: format!(
                "{}:{}:{pid}:{:08x}",
                this_host(),
                pid_namespace(),
                rand::random::<u32>()
            ),
            until,
        }
    }

    /// Whether the holder is a process of this host and PID namespace that
    /// is gone. Anything unknown (no `/proc`, no hostname) is never gone.
    pub fn holder_is_gone(&self) -> bool {
        let mut parts = self.holder.splitn(4, ':');
        let (Some(host), Some(ns), Some(pid)) = (parts.next(), parts.next(), parts.next()) else {
            return false;
        };
        let (here, my_ns) = (this_host(), pid_namespace());
        !host.is_empty()
            && host == here
            && !ns.is_empty()
            && ns == my_ns
            && pid.parse::<u32>().is_ok()
            && std::path::Path::new("/proc/self").exists()
            && !std::path::Path::new("/proc").join(pid).exists()
    }
}

/// The PID namespace's inode, or empty when unknown.
fn pid_namespace() -> String {
    std::fs::read_link("/proc/self/ns/pid")
        .ok()
        .and_then(|p| {
            p.to_string_lossy()
                .trim_start_matches("pid:[")
                .trim_end_matches(']')
                .parse::<u64>()
                .ok()
        })
        .map(|n| n.to_string())
        .unwrap_or_default()
}

fn this_host() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .unwrap_or_default()
        .trim()
        .to_owned()
}

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

mod duration_ms {
    use std::time::Duration;

    use serde::{Deserialize, Deserializer, Serializer};

    pub fn serialize<S: Serializer>(d: &Duration, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_u64(u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Duration, D::Error> {
        Ok(Duration::from_millis(u64::deserialize(d)?))
    }
}

mod opt_duration_ms {
    use std::time::Duration;

    use serde::{Deserialize, Deserializer, Serializer};

    #[allow(clippy::ref_option)] // serde's `with` hands us `&Option<T>`.
    pub fn serialize<S: Serializer>(d: &Option<Duration>, s: S) -> Result<S::Ok, S::Error> {
        match d {
            Some(d) => s.serialize_some(&u64::try_from(d.as_millis()).unwrap_or(u64::MAX)),
            None => s.serialize_none(),
        }
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Option<Duration>, D::Error> {
        Ok(Option::<u64>::deserialize(d)?.map(Duration::from_millis))
    }
}
