//! Starting one attempt's script: its directory, its log file, its
//! environment, and the supervised process group it runs in.
//!
//! - **Paths.** Every path made from a task id uses [`task_file_name`]:
//!   one file-name component, different for different ids, at most
//!   [`MAX_TASK_FILE_NAME`] bytes, never `.` or `..`, so each task has its
//!   own directory below the step's and its own logs, whatever its id. The
//!   attempt number (which only goes up) names the attempt's directory and
//!   log, so no attempt reuses another's.
//! - **Environment.** A script starts from an empty environment and gets,
//!   in this order, what the agent inherits for it
//!   ([`AgentConfig::inherited_env`]), its sheet row, and the agent's own
//!   names ([`taskfleet::envrules`]). A stored row holding a name the
//!   rules refuse (written before they existed, or by hand) is not run.
//! - **Process.** `bash SCRIPT` runs under its supervisor
//!   ([`crate::supervisor`]), which leads a new process group (signal the
//!   group to signal the script) and kills the script if the agent dies.
//!   Stdin is closed; stdout and stderr go to the log file.

use std::fmt::Write as _;
use std::io::{Read, Seek, SeekFrom};
use std::path::{Path, PathBuf};
use std::process::Stdio;

use sha2::{Digest, Sha256};
use taskfleet::envrules;
use taskfleet::model::Task;

use crate::config::AgentConfig;
use crate::supervisor::Supervise;

/// Bytes of a task id kept readable in its file name.
const READABLE_PREFIX_BYTES: usize = 64;

/// Hex digits of the id's SHA-256 in its file name: 64 bits.
const HASH_HEX_DIGITS: usize = 16;

/// Longest name [`task_file_name`] makes.
pub const MAX_TASK_FILE_NAME: usize = READABLE_PREFIX_BYTES + 1 + HASH_HEX_DIGITS;

/// Starts `bash SCRIPT` under its supervisor in a new process group, stdin
/// closed, stdout and stderr written to the log file. Returns the
/// supervisor (whose exit status is the script's) and the group's id.
pub fn spawn(
    cfg: &AgentConfig,
    task: &Task,
    log_path: &Path,
) -> std::io::Result<(tokio::process::Child, u32)> {
    if let Some((name, why)) = task
        .env
        .keys()
        .find_map(|name| Some((name, envrules::refusal(name)?)))
    {
        return Err(std::io::Error::new(
            std::io::ErrorKind::InvalidInput,
            format!(
                "the task's row sets {name}, {why}; load it again from a sheet \
                 whose column has another name"
            ),
        ));
    }
    let attempt_dir = attempt_dir(cfg, task);
    let work = attempt_dir.join("work");
    let tmp = attempt_dir.join("tmp");
    std::fs::create_dir_all(&work)?;
    std::fs::create_dir_all(&tmp)?;
    let script = attempt_dir.join("task-script.sh");
    std::fs::write(&script, &task.script)?;
    if let Some(dir) = log_path.parent() {
        std::fs::create_dir_all(dir)?;
    }
    let log = std::fs::File::create(log_path)?;
    let child = Supervise::command(&cfg.supervisor_exe, "bash", &[script.as_os_str()])
        .env_clear()
        .envs(cfg.inherited_env.iter().map(|(k, v)| (k, v)))
        .envs(&task.env)
        .env(envrules::TASK_ID, &task.task_id)
        .env(envrules::STEP, &task.step)
        .env(envrules::ATTEMPT, task.attempt.to_string())
        .env(envrules::TASK_WORKDIR, &work)
        .env(envrules::TMPDIR, &tmp)
        .current_dir(&work)
        .stdin(Stdio::null())
        .stdout(Stdio::from(log.try_clone()?))
        .stderr(Stdio::from(log))
        .process_group(0)
        .spawn()?;
    let pgid = child
        .id()
        .ok_or_else(|| std::io::Error::other("the script exited before its id was read"))?;
    Ok((child, pgid))
}

/// An attempt's own directory: the script file, `work/` (where it runs)
/// and `tmp/` (its `TMPDIR`).
pub fn attempt_dir(cfg: &AgentConfig, task: &Task) -> PathBuf {
    cfg.work_dir
        .join(&task.step)
        .join(task_file_name(&task.task_id))
        .join(task.attempt.to_string())
}

/// Where an attempt's log goes.
pub fn log_path(cfg: &AgentConfig, task: &Task) -> PathBuf {
    cfg.log_dir.join(&task.step).join(format!(
        "{}.{}.log",
        task_file_name(&task.task_id),
        task.attempt
    ))
}

/// A task id as one file-name component that no other id shares: up to
/// 64 bytes of the id with anything outside `[A-Za-z0-9._-]` turned into
/// `_` and a leading `.` into `_` (readable, never `.`, `..` or hidden),
/// then `-` and 16 hex digits of the SHA-256 of the whole id (distinct).
pub fn task_file_name(id: &str) -> String {
    let mut name: String = id
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.') {
                c
            } else {
                '_'
            }
        })
        .take(READABLE_PREFIX_BYTES)
        .collect();
    if name.starts_with('.') {
        name.replace_range(..1, "_");
    }
    name.push('-');
    for byte in &Sha256::digest(id.as_bytes())[..HASH_HEX_DIGITS / 2] {
        let _ = write!(name, "{byte:02x}");
    }
    name
}

/// The last `limit` bytes of the log, as text (invalid UTF-8 replaced).
pub fn read_tail(path: &Path, limit: usize) -> String {
    let read = || -> std::io::Result<Vec<u8>> {
        let mut f = std::fs::File::open(path)?;
        let len = f.metadata()?.len();
        f.seek(SeekFrom::Start(len.saturating_sub(limit as u64)))?;
        let mut buf = Vec::with_capacity(limit);
        f.take(limit as u64).read_to_end(&mut buf)?;
        Ok(buf)
    };
    match read() {
        Ok(bytes) => String::from_utf8_lossy(&bytes).into_owned(),
        Err(e) => format!("(log unreadable: {e})"),
    }
}

/// Adds an `agent: ...` line to an attempt's log, for what went wrong
/// outside the script.
pub fn append_note(path: &Path, note: &str) {
    use std::io::Write;
    if let Some(dir) = path.parent() {
        let _ = std::fs::create_dir_all(dir);
    }
    if let Ok(mut f) = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(path)
    {
        let _ = writeln!(f, "agent: {note}");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn task_ids_become_one_readable_path_component() {
        let name = task_file_name("HG00098");
        assert!(name.starts_with("HG00098-"), "{name}");
        assert_eq!(name.len(), "HG00098-".len() + HASH_HEX_DIGITS);
        assert!(task_file_name("chr1:1-1000").starts_with("chr1_1-1000-"));
        assert!(task_file_name("../etc/passwd").starts_with("_._etc_passwd-"));
    }

    #[test]
    fn ids_that_look_alike_get_distinct_names() {
        let ids = [
            "NA12878/1",
            "NA12878_1",
            "NA12878:1",
            "NA12878 1",
            "NA12878é1",
        ];
        let names: std::collections::BTreeSet<String> =
            ids.iter().map(|id| task_file_name(id)).collect();
        assert_eq!(names.len(), ids.len(), "{names:?}");
        // Ids that differ only after the readable prefix differ too.
        let long = "x".repeat(200);
        assert_ne!(
            task_file_name(&format!("{long}a")),
            task_file_name(&format!("{long}b"))
        );
    }

    #[test]
    fn dot_ids_stay_inside_the_step_directory() {
        let cfg = AgentConfig::new("qc", "me", "/bin/agent");
        for id in [".", "..", "../..", "/", "a/../../b"] {
            let name = task_file_name(id);
            assert!(
                !name.starts_with('.') && !name.contains('/'),
                "{id}: {name}"
            );
            let path = cfg.work_dir.join("qc").join(&name);
            assert_eq!(
                path.parent(),
                Some(cfg.work_dir.join("qc").as_path()),
                "{id}"
            );
            assert!(
                path.components()
                    .all(|c| !matches!(c, std::path::Component::ParentDir)),
                "{id}"
            );
        }
    }

    #[test]
    fn a_very_long_id_gets_a_bounded_name() {
        let id = "é".repeat(500); // 1,000 bytes
        let name = task_file_name(&id);
        assert!(name.len() <= MAX_TASK_FILE_NAME, "{}", name.len());
        assert_eq!(name.len(), MAX_TASK_FILE_NAME);
        assert!(
            name.bytes()
                .all(|b| b.is_ascii_alphanumeric() || b"._-".contains(&b))
        );
    }

    #[test]
    fn the_tail_is_the_end_of_the_log_even_with_invalid_utf8() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("log");
        let mut content = vec![b'a'; 10_000];
        content.extend_from_slice(b"\xff\xfeend\n");
        std::fs::write(&path, &content).unwrap();
        let tail = read_tail(&path, 8);
        assert!(tail.ends_with("end\n"), "{tail:?}");
        assert!(tail.contains('\u{fffd}'));
    }
}
