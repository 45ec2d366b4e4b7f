//! The agent's settings, read from flags at the edge and passed in.

use std::path::PathBuf;
use std::time::Duration;

/// Everything the agent needs besides the store.
#[derive(Debug, Clone)]
pub struct AgentConfig {
    /// The step whose tasks this agent runs.
    pub step: String,
    /// Who we are in the table: instance or host id, plus a worker id.
    pub owner: String,
    /// Tasks run at once.
    pub slots: usize,
    /// Exit after this long with nothing claimable and nothing running.
    pub idle_timeout: Option<Duration>,
    /// Shortest wait between polls of an empty step.
    pub poll_min: Duration,
    /// Longest wait between polls of an empty step.
    pub poll_max: Duration,
    /// After a stop signal, how long running tasks may go on.
    pub grace: Duration,
    /// Between TERM and KILL when a script's process group is killed.
    pub kill_grace: Duration,
    /// Where attempts get their working directories.
    pub work_dir: PathBuf,
    /// Where attempt logs are written.
    pub log_dir: PathBuf,
    /// Bytes of output kept on the task.
    pub tail_bytes: usize,
    /// Shortest wait before a failed task is claimable again; doubles with
    /// each failed attempt.
    pub retry_delay: Duration,
    /// Consecutive store errors tolerated before the agent gives up.
    pub store_error_budget: u32,
    /// Attempt directories and logs older than this are removed when the
    /// agent starts.
    pub keep_attempts: Duration,
}

impl AgentConfig {
    /// Defaults for `step`, with `owner` naming this worker.
    pub fn new(step: impl Into<String>, owner: impl Into<String>) -> Self {
        let base = std::env::temp_dir().join("taskfleet-agent");
        Self {
            step: step.into(),
            owner: owner.into(),
            slots: 1,
            idle_timeout: None,
            poll_min: Duration::from_millis(500),
            poll_max: Duration::from_secs(20),
            grace: Duration::from_secs(30),
            kill_grace: Duration::from_secs(10),
            work_dir: base.join("work"),
            log_dir: base.join("logs"),
            tail_bytes: 4096,
            retry_delay: Duration::from_secs(2),
            store_error_budget: 8,
            keep_attempts: crate::cleanup::DEFAULT_KEEP,
        }
    }
}
