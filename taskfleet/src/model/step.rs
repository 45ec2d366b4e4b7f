//! What a step is: its settings, its stored record, and what each load
//! of it leaves there (provenance, the first load's lock).

use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::time::Timestamp;

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
