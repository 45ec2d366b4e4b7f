//! A script never outlives its agent: whatever way the agent dies, every
//! process its scripts started is gone within seconds, so a reclaimed task
//! never runs beside an orphan of its earlier attempt.

use std::time::{Duration, Instant};

use nix::sys::signal::Signal;
use taskfleet::model::{FailureClass, TaskState};
use taskfleet::store::SettingsChange;

use crate::support::{Agent, TestTable, eventually, processes_with_env, task};

#[tokio::test]
async fn every_process_of_its_scripts_dies_within_seconds_of_a_sigkilled_agent() {
    let t = TestTable::new("orphans").await;
    // A value no other process on the machine carries: it finds the
    // scripts' processes, which inherit it, through /proc.
    let marker = format!("orphans-{}-{}", std::process::id(), t.name);
    let sheet = format!("sample,marker\nA,{marker}\nB,{marker}\n");
    // A child in the script's process group, and one that left it for a
    // session of its own.
    let script = "setsid sleep 600 & sleep 600";
    t.load_text("qc", script, &sheet, SettingsChange::default())
        .await;
    let mut agent = Agent::spawn(&t, "qc", &["--slots", "2"], &[]);
    eventually(
        Duration::from_secs(20),
        "both tasks running with their sleeps",
        || async {
            let running = [task(&t, "qc", "A").await, task(&t, "qc", "B").await]
                .iter()
                .all(|a| a.state == TaskState::Running);
            let sleeps = processes_with_env("MARKER", &marker)
                .iter()
                .filter(|p| p.comm == "sleep")
                .count();
            (running && sleeps == 4).then_some(())
        },
    )
    .await;

    agent.signal(Signal::SIGKILL);
    agent.wait(Duration::from_secs(5));
    let died = Instant::now();
    let mut left = processes_with_env("MARKER", &marker);
    while !left.is_empty() && died.elapsed() < Duration::from_secs(5) {
        tokio::time::sleep(Duration::from_millis(100)).await;
        left = processes_with_env("MARKER", &marker);
    }
    // Leave nothing behind on the machine, whatever the outcome.
    for p in &left {
        let _ = nix::sys::signal::kill(nix::unistd::Pid::from_raw(p.pid), Signal::SIGKILL);
    }
    assert!(
        left.is_empty(),
        "processes of the scripts outlived their agent by 5 s: {left:?}"
    );
}

#[tokio::test]
async fn a_script_killed_by_a_signal_is_recorded_with_that_signal_and_exit_codes_pass_through() {
    let t = TestTable::new("sigreport").await;
    let script = r#"case "$SAMPLE" in
  term) kill -TERM $$ ;;
  kill) kill -KILL $$ ;;
  code) exit 42 ;;
esac"#;
    let once = SettingsChange {
        max_attempts: Some(1),
        ..SettingsChange::default()
    };
    t.load_text("qc", script, "sample\nterm\nkill\ncode\n", once)
        .await;
    let mut agent = Agent::spawn(&t, "qc", &["--idle-timeout", "2s"], &[]);
    assert!(
        agent.wait(Duration::from_secs(60)).success(),
        "{}",
        agent.stderr()
    );
    for (id, exit_code, signal, class) in [
        ("term", None, Some(15), FailureClass::Signal),
        ("kill", None, Some(9), FailureClass::Signal),
        ("code", Some(42), None, FailureClass::Exit),
    ] {
        let a = task(&t, "qc", id).await;
        let h = &a.history[0];
        assert_eq!(
            (a.state, h.exit_code, h.signal, h.failure_class),
            (TaskState::Failed, exit_code, signal, Some(class)),
            "{id}: {:?}",
            a.output_tail
        );
    }
}

#[test]
fn a_supervisor_whose_agent_is_already_gone_does_not_start_the_script() {
    // The supervisor's own program, and the agent binary in its hidden mode
    // (what runs when the program is not beside the agent).
    for (program, mode) in [
        (env!("CARGO_BIN_EXE_agent-supervise"), None),
        (env!("CARGO_BIN_EXE_agent"), Some("__supervise")),
    ] {
        let dir = tempfile::tempdir().unwrap();
        let ran = dir.path().join("ran");
        // Its parent is this test, not pid 1: as if the agent had died
        // before the supervisor could ask to be told.
        let out = std::process::Command::new(program)
            .args(mode)
            .args(["--parent-pid", "1", "--", "bash", "-c"])
            .arg(format!("touch {}", ran.display()))
            .output()
            .unwrap();
        assert_eq!(out.status.code(), Some(127), "{program}");
        assert!(!ran.exists(), "{program}: the script ran");
        assert!(
            String::from_utf8_lossy(&out.stderr).contains("the agent is gone"),
            "{program}: {out:?}"
        );
    }
}

#[test]
fn the_agent_runs_its_scripts_under_the_supervisor_beside_it() {
    let agent = std::path::Path::new(env!("CARGO_BIN_EXE_agent"));
    assert_eq!(
        agent::supervisor::Supervise::program_beside(agent),
        std::path::Path::new(env!("CARGO_BIN_EXE_agent-supervise")),
        "cargo builds both into one directory"
    );
    let alone = tempfile::tempdir().unwrap();
    let copy = alone.path().join("agent");
    assert_eq!(agent::supervisor::Supervise::program_beside(&copy), copy);
}
