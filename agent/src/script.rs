//! Starting one attempt's script: its working directory, its log file,
//! its environment, and the process group it runs in.

use std::io::{Read, Seek, SeekFrom};
use std::path::{Path, PathBuf};
use std::process::Stdio;

use taskfleet::model::Task;

use crate::config::AgentConfig;

/// Starts `bash SCRIPT` in a new process group, stdin closed, stdout and
/// stderr appended to the log file.
pub fn spawn(
    cfg: &AgentConfig,
    task: &Task,
    log_path: &Path,
) -> std::io::Result<(tokio::process::Child, u32)> {
    let attempt_dir = cfg
        .work_dir
        .join(&task.step)
        .join(safe_name(&task.task_id))
        .join(task.attempt.to_string());
    let work = attempt_dir.join("work");
    std::fs::create_dir_all(&work)?;
    let script = attempt_dir.join("task-script.sh");
    std::fs::write(&script, &task.script)?;
    if let Some(dir) = log_path.parent() {
        std::fs::create_dir_all(dir)?;
    }
    let log = std::fs::File::create(log_path)?;
    let child = tokio::process::Command::new("bash")
        .arg(&script)
        .current_dir(&work)
        .envs(&task.env)
        .env("TASK_ID", &task.task_id)
        .env("STEP", &task.step)
        .env("ATTEMPT", task.attempt.to_string())
        .env("TASK_WORKDIR", &work)
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

/// Where an attempt's log goes.
pub fn log_path(cfg: &AgentConfig, task: &Task) -> PathBuf {
    cfg.log_dir
        .join(&task.step)
        .join(format!("{}.{}.log", safe_name(&task.task_id), task.attempt))
}

/// A task id as one safe path component.
fn safe_name(id: &str) -> String {
    id.chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.') {
                c
            } else {
                '_'
            }
        })
        .collect()
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
    fn task_ids_become_one_path_component() {
        assert_eq!(safe_name("HG00098"), "HG00098");
        assert_eq!(safe_name("../etc/passwd"), ".._etc_passwd");
        assert_eq!(safe_name("chr1:1-1000"), "chr1_1-1000");
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
