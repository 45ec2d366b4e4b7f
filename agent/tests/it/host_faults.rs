//! Faults that are not the task's: a host that cannot prepare an attempt,
//! a stop signal that reaches the script before the agent, a retry delay
//! longer than the idle timeout. Real agent processes, on both stores.

use std::time::{Duration, Instant};

use nix::sys::signal::{Signal, killpg};
use nix::unistd::Pid;
use taskfleet::model::{FailureClass, TaskState};
use taskfleet::store::{SettingsChange, TaskStore};
use testkit::{TestStore, load_text};

use crate::support::{Agent, eventually};

per_store!(
    a_host_that_cannot_write_its_logs_releases_the_task_and_stops_with_exit_5,
    a_full_disk_releases_the_task_and_stops_the_agent_with_exit_5,
    a_script_signalled_while_its_agent_stops_is_released_not_failed,
    an_idle_agent_waits_for_a_retry_whose_delay_outlasts_its_idle_timeout,
);

fn settings(max_attempts: u32) -> SettingsChange {
    SettingsChange {
        max_attempts: Some(max_attempts),
        ..SettingsChange::default()
    }
}

async fn a_host_that_cannot_write_its_logs_releases_the_task_and_stops_with_exit_5(t: TestStore) {
    load_text(&t.store, "qc", "echo hi", "sample\nA\nB\n", settings(1)).await;
    // A log directory under a regular file: every attempt's preparation
    // fails, as on a full or read-only disk (root ignores permissions).
    let blocker = t.dir.path().join("not-a-dir");
    std::fs::write(&blocker, "").unwrap();
    let logs = blocker.join("logs").display().to_string();
    let mut agent = Agent::spawn_on(
        &t.locator,
        t.dir.path(),
        "qc",
        &["--log-dir", &logs, "--idle-timeout", "5s"],
        &[],
    );
    let status = agent.wait(Duration::from_secs(60));
    assert_eq!(status.code(), Some(5), "{}", agent.stderr());
    assert!(
        agent
            .stderr()
            .contains("this host cannot prepare an attempt"),
        "{}",
        agent.stderr()
    );
    for id in ["A", "B"] {
        let task = t.store.task("qc", id).await.unwrap().unwrap();
        // Not failed (max attempts is 1), and no attempt used.
        assert_eq!(
            (task.state, task.failed_attempts, task.owner),
            (TaskState::Pending, 0, None),
            "{id}"
        );
        if task.attempt > 0 {
            assert_eq!(
                task.history.last().unwrap().failure_class,
                Some(FailureClass::Host)
            );
        }
    }
    let s = &t.store.status(Some("qc")).await.unwrap()[0];
    assert_eq!((s.pending, s.running, s.failed), (2, 0, 0));
}

async fn a_script_signalled_while_its_agent_stops_is_released_not_failed(t: TestStore) {
    let pidfile = t.dir.path().join("script.pid");
    let script = format!("echo $$ > {}; sleep 60", pidfile.display());
    load_text(&t.store, "qc", &script, "sample\nA\n", settings(1)).await;
    let mut agent = Agent::spawn_on(&t.locator, t.dir.path(), "qc", &["--grace", "30s"], &[]);
    let script_pid: i32 = eventually(Duration::from_secs(30), "the script to start", || async {
        std::fs::read_to_string(&pidfile)
            .ok()
            .and_then(|s| s.trim().parse().ok())
    })
    .await;
    // A supervisor stopping the host signals every process: the agent,
    // and the script's whole process group.
    let stat = std::fs::read_to_string(format!("/proc/{script_pid}/stat")).unwrap();
    let group: i32 = stat
        .rsplit(')')
        .next()
        .unwrap()
        .split_whitespace()
        .nth(2)
        .unwrap()
        .parse()
        .unwrap();
    agent.signal(Signal::SIGTERM);
    killpg(Pid::from_raw(group), Signal::SIGTERM).unwrap();
    assert!(
        agent.wait(Duration::from_secs(30)).success(),
        "{}",
        agent.stderr()
    );
    let task = t.store.task("qc", "A").await.unwrap().unwrap();
    assert_eq!(
        (task.state, task.failed_attempts),
        (TaskState::Pending, 0),
        "a stop is not the task's failure: {:?}",
        task.history
    );
    assert_eq!(
        task.history.last().unwrap().failure_class,
        Some(FailureClass::Interrupted)
    );
}

async fn an_idle_agent_waits_for_a_retry_whose_delay_outlasts_its_idle_timeout(t: TestStore) {
    let script = r#"[ "$ATTEMPT" -ge 2 ] || exit 1; echo ok"#;
    load_text(&t.store, "qc", script, "sample\nA\n", settings(3)).await;
    let started = Instant::now();
    let mut agent = Agent::spawn_on(
        &t.locator,
        t.dir.path(),
        "qc",
        &["--idle-timeout", "1s", "--retry-delay", "4s"],
        &[],
    );
    assert!(
        agent.wait(Duration::from_secs(60)).success(),
        "{}",
        agent.stderr()
    );
    let task = t.store.task("qc", "A").await.unwrap().unwrap();
    assert_eq!(
        (task.state, task.attempt),
        (TaskState::Done, 2),
        "the retry was stranded: {:?}",
        task.history
    );
    assert!(started.elapsed() >= Duration::from_secs(4));
}

/// A 64 KiB tmpfs, filled up, unmounted when dropped.
struct FullDisk {
    dir: std::path::PathBuf,
}

impl FullDisk {
    fn mount(under: &std::path::Path) -> Self {
        let dir = under.join("full-disk");
        std::fs::create_dir_all(&dir).unwrap();
        let status = std::process::Command::new("mount")
            .args(["-t", "tmpfs", "-o", "size=64k", "tmpfs"])
            .arg(&dir)
            .status()
            .expect("run mount");
        assert!(
            status.success(),
            "cannot mount a small tmpfs at {} ({status}): this test needs root, as the test command has",
            dir.display()
        );
        let disk = Self { dir };
        // Fill it: the next write anywhere on it fails with ENOSPC.
        let mut filler = std::fs::File::create(disk.dir.join("filler")).unwrap();
        let block = vec![0u8; 4096];
        while std::io::Write::write_all(&mut filler, &block).is_ok() {}
        disk
    }
}

impl Drop for FullDisk {
    fn drop(&mut self) {
        let _ = std::process::Command::new("umount")
            .arg("-l")
            .arg(&self.dir)
            .status();
    }
}

async fn a_full_disk_releases_the_task_and_stops_the_agent_with_exit_5(t: TestStore) {
    load_text(&t.store, "qc", "echo hi", "sample\nA\n", settings(1)).await;
    let disk = FullDisk::mount(t.dir.path());
    let (work, logs) = (disk.dir.join("work"), disk.dir.join("logs"));
    let mut agent = Agent::spawn_on(
        &t.locator,
        t.dir.path(),
        "qc",
        &[
            "--work-dir",
            &work.display().to_string(),
            "--log-dir",
            &logs.display().to_string(),
            "--idle-timeout",
            "5s",
        ],
        &[],
    );
    let status = agent.wait(Duration::from_secs(60));
    assert_eq!(status.code(), Some(5), "{}", agent.stderr());
    let task = t.store.task("qc", "A").await.unwrap().unwrap();
    assert_eq!(
        (task.state, task.failed_attempts, task.owner),
        (TaskState::Pending, 0, None),
        "a full disk is not the task's failure: {:?}",
        task.history
    );
    assert_eq!(
        task.history.last().unwrap().failure_class,
        Some(FailureClass::Host)
    );
    drop(disk);
}
