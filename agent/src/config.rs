//! The agent's settings, read from flags and the environment at the edge
//! and passed in as plain data.

use std::ffi::OsString;
use std::path::PathBuf;
use std::time::Duration;

use taskfleet::envrules;

/// Everything the agent needs besides the store.
#[derive(Debug, Clone)]
pub struct AgentConfig {
    /// The step whose tasks this agent runs.
    pub step: String,
    /// Who we are in the table: instance or host id, plus a worker id.
    pub owner: String,
    /// Tasks run at once.
    pub slots: usize,
    /// This agent's place among the agents launched with it (0, 1, ...):
    /// where in the step it starts looking for tasks.
    pub spread: Option<u32>,
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
    /// The host as attempts' provenance names it (on EC2: instance id,
    /// type, AMI, lifecycle, region); the owner when `None`.
    pub host: Option<String>,
    /// Each script's supervising parent ([`crate::supervisor`]): the
    /// supervisor's own program, or the agent binary re-executed.
    pub supervisor_exe: PathBuf,
    /// What scripts get of the agent's own environment (see
    /// [`inherited_env`]); nothing else of it reaches them.
    pub inherited_env: Vec<(String, OsString)>,
    /// Where attempt logs are uploaded, if anywhere besides the log
    /// directory.
    pub upload: Option<LogUpload>,
}

/// Attempt logs to S3: every `every` while a script runs, and at its end
/// whatever the outcome (see [`crate::log_upload`]).
#[derive(Debug, Clone)]
pub struct LogUpload {
    /// An S3 client of the agent's.
    pub client: aws_sdk_s3::Client,
    /// The bucket and prefix.
    pub to: taskfleet::logs::LogBucket,
    /// Between uploads of a running attempt's log: what a dead host
    /// loses at most.
    pub every: Duration,
}

impl AgentConfig {
    /// Defaults for `step`, with `owner` naming this worker and
    /// `supervisor_exe` the supervisor (or agent) binary. Scripts inherit
    /// nothing of the agent's environment until
    /// [`AgentConfig::inherited_env`] is set.
    pub fn new(
        step: impl Into<String>,
        owner: impl Into<String>,
        supervisor_exe: impl Into<PathBuf>,
    ) -> Self {
        let base = std::env::temp_dir().join("taskfleet-agent");
        Self {
            step: step.into(),
            owner: owner.into(),
            slots: 1,
            spread: None,
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
            host: None,
            supervisor_exe: supervisor_exe.into(),
            inherited_env: Vec::new(),
            upload: None,
        }
    }
}

/// What scripts get of the agent's environment, as `lookup` (the
/// environment) has it: the [`envrules::INHERITED`] names that are set,
/// then each name of `pass_env` (`--pass-env`), which must be set. The
/// agent's own names ([`envrules::AGENT_NAMES`]) cannot be passed: the
/// agent sets them for every attempt.
pub fn inherited_env(
    pass_env: &[String],
    lookup: impl Fn(&str) -> Option<OsString>,
) -> Result<Vec<(String, OsString)>, String> {
    let mut env: Vec<(String, OsString)> = envrules::INHERITED
        .iter()
        .filter_map(|&name| Some((name.to_owned(), lookup(name)?)))
        .collect();
    for name in pass_env {
        if name.is_empty() || name.contains(['=', '\0']) {
            return Err(format!(
                "--pass-env '{name}': not a variable name; give the name only, as in --pass-env RESULTS"
            ));
        }
        if envrules::AGENT_NAMES.contains(&name.as_str()) {
            return Err(format!(
                "--pass-env {name}: the agent sets {name} itself for every attempt"
            ));
        }
        let Some(value) = lookup(name) else {
            return Err(format!(
                "--pass-env {name}: {name} is not set in the agent's environment; set it, or drop --pass-env {name}"
            ));
        };
        env.retain(|(n, _)| n != name);
        env.push((name.clone(), value));
    }
    Ok(env)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn lookup(name: &str) -> Option<OsString> {
        match name {
            "PATH" => Some("/usr/bin".into()),
            "LANG" => Some("C.UTF-8".into()),
            "AWS_SECRET_ACCESS_KEY" => Some("secret".into()),
            "RESULTS" => Some("/data".into()),
            _ => None,
        }
    }

    #[test]
    fn scripts_inherit_the_allow_list_and_the_names_passed_through_only() {
        let env = inherited_env(&["RESULTS".into()], lookup).unwrap();
        assert_eq!(
            env,
            [
                ("PATH".to_owned(), OsString::from("/usr/bin")),
                ("LANG".to_owned(), OsString::from("C.UTF-8")),
                ("RESULTS".to_owned(), OsString::from("/data")),
            ]
        );
        let with_key = inherited_env(&["AWS_SECRET_ACCESS_KEY".into()], lookup).unwrap();
        assert_eq!(with_key.last().unwrap().0, "AWS_SECRET_ACCESS_KEY");
    }

    #[test]
    fn passing_an_unset_name_or_one_the_agent_sets_is_an_error() {
        let err = inherited_env(&["NOPE".into()], lookup).unwrap_err();
        assert!(err.starts_with("--pass-env NOPE: NOPE is not set"), "{err}");
        let err = inherited_env(&["TASK_ID".into()], lookup).unwrap_err();
        assert!(err.contains("the agent sets TASK_ID itself"), "{err}");
        assert!(inherited_env(&["A=B".into()], lookup).is_err());
    }
}
