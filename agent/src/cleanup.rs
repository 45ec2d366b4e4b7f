//! Old attempts' working directories and logs are removed when an agent
//! starts, once they are older than `keep_attempts`, so that a long-lived
//! host does not fill its disk with them. Only this step's directories
//! are touched, and only entries this agent's layout creates: attempt
//! directories two levels under the step's work directory, and files under
//! the step's log directory.

use std::path::Path;
use std::time::{Duration, SystemTime};

use crate::config::AgentConfig;

/// Removes this step's attempt directories and logs older than
/// `cfg.keep_attempts`. Problems are logged, never fatal: a directory the
/// agent cannot clean is found again when it prepares an attempt.
pub fn sweep(cfg: &AgentConfig) {
    let Some(cutoff) = SystemTime::now().checked_sub(cfg.keep_attempts) else {
        return;
    };
    let mut removed = 0usize;
    let work = cfg.work_dir.join(&cfg.step);
    for task_dir in entries(&work) {
        for attempt_dir in entries(&task_dir) {
            if older(&attempt_dir, cutoff) && std::fs::remove_dir_all(&attempt_dir).is_ok() {
                removed += 1;
            }
        }
        // Empty and old: gone too. A fresh one may be a directory another
        // agent on this host is preparing an attempt in right now.
        if older(&task_dir, cutoff) {
            let _ = std::fs::remove_dir(&task_dir);
        }
    }
    let logs = cfg.log_dir.join(&cfg.step);
    removed += sweep_files(&logs, cutoff);
    if removed > 0 {
        tracing::info!(removed, older_than = ?cfg.keep_attempts, "removed old attempt directories and logs");
    }
}

fn sweep_files(dir: &Path, cutoff: SystemTime) -> usize {
    let mut removed = 0;
    for entry in entries(dir) {
        if entry.is_dir() {
            removed += sweep_files(&entry, cutoff);
            if older(&entry, cutoff) {
                let _ = std::fs::remove_dir(&entry);
            }
        } else if older(&entry, cutoff) && std::fs::remove_file(&entry).is_ok() {
            removed += 1;
        }
    }
    removed
}

fn entries(dir: &Path) -> Vec<std::path::PathBuf> {
    std::fs::read_dir(dir)
        .map(|rd| rd.filter_map(Result::ok).map(|e| e.path()).collect())
        .unwrap_or_default()
}

fn older(path: &Path, cutoff: SystemTime) -> bool {
    std::fs::symlink_metadata(path)
        .and_then(|m| m.modified())
        .is_ok_and(|t| t < cutoff)
}

/// The default age: a week, long enough to look at a failed attempt.
pub const DEFAULT_KEEP: Duration = Duration::from_secs(7 * 86_400);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_fresh_empty_task_directory_is_left_for_the_agent_preparing_it() {
        let dir = tempfile::tempdir().unwrap();
        let mut cfg = AgentConfig::new("align", "w", "agent");
        cfg.work_dir = dir.path().join("work");
        cfg.log_dir = dir.path().join("logs");
        cfg.keep_attempts = Duration::from_secs(3600);
        let fresh = cfg.work_dir.join("align/B");
        std::fs::create_dir_all(&fresh).unwrap();
        sweep(&cfg);
        assert!(fresh.exists());
    }

    #[test]
    fn only_old_attempts_of_the_step_are_removed() {
        let dir = tempfile::tempdir().unwrap();
        let mut cfg = AgentConfig::new("align", "w", "agent");
        cfg.work_dir = dir.path().join("work");
        cfg.log_dir = dir.path().join("logs");
        cfg.keep_attempts = Duration::from_secs(3600);
        let old = cfg.work_dir.join("align/A/1");
        let new = cfg.work_dir.join("align/A/2");
        let other = cfg.work_dir.join("call/A/1");
        for d in [&old, &new, &other] {
            std::fs::create_dir_all(d).unwrap();
        }
        let old_log = cfg.log_dir.join("align/A.1.log");
        let new_log = cfg.log_dir.join("align/A.2.log");
        std::fs::create_dir_all(cfg.log_dir.join("align")).unwrap();
        std::fs::write(&old_log, "x").unwrap();
        std::fs::write(&new_log, "x").unwrap();
        let long_ago = SystemTime::now() - Duration::from_secs(7200);
        for p in [&old, &other, &old_log] {
            std::fs::File::open(p)
                .unwrap()
                .set_modified(long_ago)
                .unwrap();
        }
        sweep(&cfg);
        assert!(!old.exists() && !old_log.exists());
        assert!(new.exists() && new_log.exists() && other.exists());
    }
}
