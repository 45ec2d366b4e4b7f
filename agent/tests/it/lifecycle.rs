//! One task's life under real agent processes: failures and retries, a
//! dead agent, a lease taken away, huge and invalid output.

use std::time::{Duration, Instant};

use aws_sdk_dynamodb::types::AttributeValue;
use nix::sys::signal::Signal;
use taskfleet::model::{AttemptRecord, FailureClass, TaskState};
use taskfleet::schema;
use taskfleet::store::{Finish, SettingsChange, TaskStore};
use taskfleet::time::Timestamp;

use crate::support::{Agent, SKEW_MARGIN, TestTable, alive, eventually, task};

fn settings(max_attempts: u32, lease_secs: u64) -> SettingsChange {
    SettingsChange {
        max_attempts: Some(max_attempts),
        lease: Some(Duration::from_secs(lease_secs)),
        ..SettingsChange::default()
    }
}

#[tokio::test]
async fn a_task_failing_every_attempt_ends_failed_with_each_attempt_recorded() {
    let t = TestTable::new("fail").await;
    t.load_text("qc", "echo trying; exit 3", "sample\nA\n", settings(2, 60))
        .await;
    let mut agent = Agent::spawn(&t, "qc", &["--idle-timeout", "2s"], &[]);
    assert!(
        agent.wait(Duration::from_secs(60)).success(),
        "{}",
        agent.stderr()
    );
    let a = task(&t, "qc", "A").await;
    assert_eq!(
        (a.state, a.attempt, a.failed_attempts, a.exit_code),
        (TaskState::Failed, 2, 2, Some(3))
    );
    let classes: Vec<_> = a
        .history
        .iter()
        .map(|h| (h.attempt, h.exit_code, h.failure_class, h.outcome))
        .collect();
    assert_eq!(
        classes,
        [
            (1, Some(3), Some(FailureClass::Exit), TaskState::Pending),
            (2, Some(3), Some(FailureClass::Exit), TaskState::Failed)
        ]
    );
    assert_eq!(a.output_tail.as_deref(), Some("trying\n"));
    let s = &t.store.status(Some("qc")).await.unwrap()[0];
    assert_eq!((s.failed, s.pending, s.running), (1, 0, 0));
}

#[tokio::test]
async fn a_task_that_fails_once_then_succeeds_ends_done() {
    let t = TestTable::new("flaky").await;
    let script =
        r#"[ "$ATTEMPT" -ge 2 ] || { echo "first try fails"; exit 1; }; echo "ok on $ATTEMPT""#;
    t.load_text("qc", script, "sample\nA\n", settings(3, 60))
        .await;
    let mut agent = Agent::spawn(&t, "qc", &["--idle-timeout", "2s"], &[]);
    assert!(
        agent.wait(Duration::from_secs(60)).success(),
        "{}",
        agent.stderr()
    );
    let a = task(&t, "qc", "A").await;
    assert_eq!(
        (a.state, a.attempt, a.failed_attempts, a.exit_code),
        (TaskState::Done, 2, 1, Some(0))
    );
    assert_eq!(a.history[0].failure_class, Some(FailureClass::Exit));
    assert_eq!(a.history[1].outcome, TaskState::Done);
    assert_eq!(a.output_tail.as_deref(), Some("ok on 2\n"));
    assert_eq!(t.store.status(Some("qc")).await.unwrap()[0].done, 1);
}

#[tokio::test]
async fn a_task_whose_agent_was_killed_is_reclaimed_after_its_lease_and_finished() {
    let t = TestTable::new("sigkill").await;
    // The first attempt hangs (its agent will die); the second finishes.
    let script = r#"if [ "$ATTEMPT" = 1 ]; then sleep 15; fi; echo "finished by attempt $ATTEMPT""#;
    t.load_text("qc", script, "sample\nA\n", settings(3, 3))
        .await;
    let mut first = Agent::spawn(&t, "qc", &[], &[]);
    eventually(
        Duration::from_secs(20),
        "the first agent to claim the task",
        || async { (task(&t, "qc", "A").await.state == TaskState::Running).then_some(()) },
    )
    .await;
    first.signal(Signal::SIGKILL);
    first.wait(Duration::from_secs(5));
    // The dead owner's last lease, once a heartbeat it may have sent just
    // before it died has landed.
    tokio::time::sleep(Duration::from_millis(300)).await;
    let dead_lease = task(&t, "qc", "A").await.lease_expires_at.unwrap();

    let mut second = Agent::spawn(&t, "qc", &["--idle-timeout", "3s"], &[]);
    assert!(
        second.wait(Duration::from_secs(60)).success(),
        "{}",
        second.stderr()
    );
    let a = task(&t, "qc", "A").await;
    assert_eq!((a.state, a.attempt), (TaskState::Done, 2));
    assert_eq!(a.history.len(), 2);
    assert_eq!(a.history[0].failure_class, Some(FailureClass::Lost));
    assert_eq!(a.history[1].outcome, TaskState::Done);
    assert_eq!(a.output_tail.as_deref(), Some("finished by attempt 2\n"));
    // Not before the lease and the skew margin ran out: the reclaiming
    // claim started at least the margin after the dead owner's lease
    // expired.
    let reclaimed = a.started_at.unwrap();
    assert!(
        reclaimed.since(dead_lease) >= SKEW_MARGIN,
        "reclaimed {} ms after the lease expired, before the skew margin of {SKEW_MARGIN:?}",
        reclaimed.as_millis() - dead_lease.as_millis()
    );
}

#[tokio::test]
async fn a_lease_taken_away_kills_the_script_within_a_heartbeat_and_its_result_is_refused() {
    let t = TestTable::new("takeover").await;
    let pidfile = t.dir.path().join("script.pid");
    let script = format!("echo $$ > {}; sleep 30; echo never", pidfile.display());
    t.load_text("qc", &script, "sample\nA\n", settings(3, 3))
        .await;
    let meta = t.store.step("qc").await.unwrap().unwrap();
    let mut agent = Agent::spawn(&t, "qc", &[], &[]);
    let pid: i32 = eventually(Duration::from_secs(20), "the script to start", || async {
        std::fs::read_to_string(&pidfile)
            .ok()
            .and_then(|s| s.trim().parse().ok())
    })
    .await;
    assert!(alive(pid));

    // Another owner takes the task over, as a reclaim would.
    let key = schema::task_key("qc", meta.shards, "A");
    t.store
        .client()
        .update_item()
        .table_name(&t.name)
        .set_key(Some(key))
        .update_expression("SET #o = :thief, #a = #a + :one, #l = :later")
        .expression_attribute_names("#o", "owner")
        .expression_attribute_names("#a", "attempt")
        .expression_attribute_names("#l", "lease_expires_at")
        .expression_attribute_values(":thief", AttributeValue::S("thief/w".into()))
        .expression_attribute_values(":one", AttributeValue::N("1".into()))
        .expression_attribute_values(
            ":later",
            AttributeValue::N(
                Timestamp::now()
                    .plus(Duration::from_secs(60))
                    .as_millis()
                    .to_string(),
            ),
        )
        .send()
        .await
        .unwrap();
    let taken = Instant::now();
    // One heartbeat is at most lease/3 = 1 s away; then TERM.
    eventually(
        Duration::from_secs(4),
        "the script to be killed",
        || async { (!alive(pid)).then_some(()) },
    )
    .await;
    assert!(
        taken.elapsed() < Duration::from_secs(3),
        "killed after {:?}",
        taken.elapsed()
    );

    // The new owner finishes; the first agent wrote nothing.
    let thief = task(&t, "qc", "A").await;
    let record = AttemptRecord {
        attempt: thief.attempt,
        owner: "thief/w".into(),
        started_at: Timestamp::now(),
        finished_at: Timestamp::now(),
        outcome: TaskState::Done,
        exit_code: Some(0),
        signal: None,
        failure_class: None,
        log_uri: None,
        provenance: None,
    };
    let finish = Finish {
        next: TaskState::Done,
        counts_as_failure: false,
        ready_at: Timestamp::now(),
        record,
        output_tail: Some("thief's output".into()),
        escalate_to: None,
        expires_at: None,
    };
    assert_eq!(
        t.store.finish(&meta, &thief, &finish).await.unwrap(),
        taskfleet::store::Fence::Held
    );
    agent.signal(Signal::SIGTERM);
    assert!(
        agent.wait(Duration::from_secs(20)).success(),
        "{}",
        agent.stderr()
    );
    let a = task(&t, "qc", "A").await;
    assert_eq!((a.state, a.attempt), (TaskState::Done, 2));
    assert_eq!(a.output_tail.as_deref(), Some("thief's output"));
    assert!(
        a.history.iter().all(|h| h.owner == "thief/w"),
        "{:?}",
        a.history
    );
    assert!(
        agent.stderr().contains("lease taken away"),
        "{}",
        agent.stderr()
    );
}

#[tokio::test]
async fn fifty_megabytes_of_invalid_utf8_output_keep_the_agent_small_and_the_tail_is_stored() {
    let t = TestTable::new("output").await;
    let script =
        r"head -c 50000000 /dev/zero | tr '\0' 'x'; printf '\n\xff\xfe not utf-8\nthe end\n'";
    t.load_text("qc", script, "sample\nA\n", settings(1, 60))
        .await;
    let mut agent = Agent::spawn(&t, "qc", &["--idle-timeout", "2s"], &[]);
    let pid = agent.pid();
    let mut peak_kb = 0u64;
    let status = loop {
        if let Ok(text) = std::fs::read_to_string(format!("/proc/{pid}/status"))
            && let Some(line) = text.lines().find(|l| l.starts_with("VmHWM:"))
        {
            peak_kb = peak_kb.max(line.split_whitespace().nth(1).unwrap().parse().unwrap());
        }
        if let Some(status) = agent.child.try_wait().unwrap() {
            break status;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    assert!(status.success(), "{}", agent.stderr());
    let a = task(&t, "qc", "A").await;
    assert_eq!(a.state, TaskState::Done);
    let tail = a.output_tail.unwrap();
    assert!(
        tail.ends_with("\u{fffd}\u{fffd} not utf-8\nthe end\n"),
        "{tail:?}"
    );
    assert!(tail.len() <= 4096 + 16, "tail is bounded: {}", tail.len());
    let log_uri = a.history[0].log_uri.clone().unwrap();
    let log = std::fs::metadata(log_uri.strip_prefix("file://").unwrap()).unwrap();
    assert!(log.len() > 50_000_000, "the whole output is in the log");
    // The output is streamed to the log, never held: the agent's peak
    // resident memory stays far below the 50 MB it passed on.
    assert!(
        peak_kb > 0 && peak_kb < 40 * 1024,
        "agent peak RSS {peak_kb} kB"
    );
}

#[tokio::test]
async fn an_agent_on_an_empty_step_exits_zero_within_the_idle_timeout_plus_a_poll() {
    let t = TestTable::new("idle").await;
    t.load_text("qc", "true", "sample\nA\n", settings(1, 60))
        .await;
    let mut drain = Agent::spawn(&t, "qc", &["--idle-timeout", "1s"], &[]);
    assert!(drain.wait(Duration::from_secs(30)).success());
    assert_eq!(task(&t, "qc", "A").await.state, TaskState::Done);

    let started = Instant::now();
    let mut idle = Agent::spawn(&t, "qc", &["--idle-timeout", "2s"], &[]);
    let status = idle.wait(Duration::from_secs(30));
    let took = started.elapsed();
    assert!(status.success(), "{}", idle.stderr());
    assert!(
        took >= Duration::from_secs(2),
        "exited before the idle timeout: {took:?}"
    );
    // Timeout + one poll interval, plus process start-up on a loaded machine.
    assert!(took < Duration::from_secs(2 + 1 + 2), "took {took:?}");
}

#[tokio::test]
async fn an_agent_with_no_table_or_no_step_exits_3_with_one_line() {
    let t = TestTable::new("fatal").await;
    let mut no_step = Agent::spawn(&t, "nope", &[], &[]);
    assert_eq!(no_step.wait(Duration::from_secs(20)).code(), Some(3));
    let err = no_step.stderr();
    assert!(err.contains("error: step 'nope' does not exist"), "{err}");

    let other = testkit::unique_table("absent");
    let mut cmd = std::process::Command::new(env!("CARGO_BIN_EXE_agent"));
    let out = cmd
        .env_clear()
        .envs(testkit::child_env())
        .args([
            "--table",
            &other,
            "--endpoint-url",
            &crate::support::endpoint(),
            "--step",
            "qc",
        ])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(3));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains(&format!("error: table '{other}' does not exist")),
        "{err}"
    );
}

#[tokio::test]
async fn the_step_timeout_kills_the_whole_process_group_and_counts_as_class_timeout() {
    let t = TestTable::new("timeout").await;
    let pidfile = t.dir.path().join("child.pid");
    // A background child that ignores nothing: it must die with the group.
    let script = format!("sleep 60 & echo $! > {}; wait", pidfile.display());
    let limit = SettingsChange {
        max_attempts: Some(1),
        timeout: Some(Duration::from_secs(1)),
        ..SettingsChange::default()
    };
    t.load_text("qc", &script, "sample\nA\n", limit).await;
    let mut agent = Agent::spawn(&t, "qc", &["--idle-timeout", "1s"], &[]);
    assert!(
        agent.wait(Duration::from_secs(30)).success(),
        "{}",
        agent.stderr()
    );
    let a = task(&t, "qc", "A").await;
    assert_eq!(
        (a.state, a.failure_class),
        (TaskState::Failed, Some(FailureClass::Timeout))
    );
    let child: i32 = std::fs::read_to_string(&pidfile)
        .unwrap()
        .trim()
        .parse()
        .unwrap();
    assert!(
        !alive(child),
        "the script's background child outlived the timeout"
    );
}
