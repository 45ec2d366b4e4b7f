//! SIGTERM: finish within the grace period, or release without using an
//! attempt.

use std::time::Duration;

use nix::sys::signal::Signal;
use taskfleet::model::{FailureClass, TaskState};
use taskfleet::store::{SettingsChange, TaskStore};

use crate::support::{Agent, TestTable, eventually, task};

async fn started(t: &TestTable) {
    eventually(Duration::from_secs(20), "the task to start", || async {
        (task(t, "qc", "A").await.state == TaskState::Running).then_some(())
    })
    .await;
    // Let bash get going.
    tokio::time::sleep(Duration::from_millis(300)).await;
}

#[tokio::test]
async fn sigterm_with_a_grace_longer_than_the_task_lets_it_finish_done() {
    let t = TestTable::new("grace").await;
    t.load_text(
        "qc",
        "sleep 3; echo finished",
        "sample\nA\n",
        SettingsChange::default(),
    )
    .await;
    let mut agent = Agent::spawn(&t, "qc", &["--grace", "20s"], &[]);
    started(&t).await;
    agent.signal(Signal::SIGTERM);
    assert!(
        agent.wait(Duration::from_secs(30)).success(),
        "{}",
        agent.stderr()
    );
    let a = task(&t, "qc", "A").await;
    assert_eq!((a.state, a.attempt), (TaskState::Done, 1));
    assert_eq!(a.output_tail.as_deref(), Some("finished\n"));
}

#[tokio::test]
async fn sigterm_with_a_shorter_grace_releases_the_task_without_using_an_attempt() {
    let t = TestTable::new("release").await;
    t.load_text("qc", "sleep 60", "sample\nA\n", SettingsChange::default())
        .await;
    let mut agent = Agent::spawn(&t, "qc", &["--grace", "1s"], &[]);
    started(&t).await;
    agent.signal(Signal::SIGTERM);
    assert!(
        agent.wait(Duration::from_secs(30)).success(),
        "{}",
        agent.stderr()
    );
    let a = task(&t, "qc", "A").await;
    assert_eq!((a.state, a.failed_attempts), (TaskState::Pending, 0));
    assert_eq!(a.owner, None);
    assert_eq!(
        a.history.last().unwrap().failure_class,
        Some(FailureClass::Interrupted)
    );
    let s = &t.store.status(Some("qc")).await.unwrap()[0];
    assert_eq!((s.pending, s.running), (1, 0));
}

#[tokio::test]
async fn a_second_signal_skips_the_grace_period() {
    let t = TestTable::new("second").await;
    t.load_text("qc", "sleep 60", "sample\nA\n", SettingsChange::default())
        .await;
    let mut agent = Agent::spawn(&t, "qc", &["--grace", "60s"], &[]);
    started(&t).await;
    agent.signal(Signal::SIGTERM);
    tokio::time::sleep(Duration::from_millis(300)).await;
    agent.signal(Signal::SIGINT);
    assert!(
        agent.wait(Duration::from_secs(15)).success(),
        "{}",
        agent.stderr()
    );
    assert_eq!(task(&t, "qc", "A").await.state, TaskState::Pending);
}
