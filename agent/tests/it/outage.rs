//! A store that goes away while a script finishes: the result is kept and
//! written when the store comes back, while the lease is still ours; the
//! task is not reclaimed, counted as a failure and run again.
//!
//! The outage refuses connections (an endpoint that is down) rather than
//! freezing: requests sent into a frozen store are answered when it wakes,
//! which would hide a worker that gave up.

use std::time::Duration;

use taskfleet::model::TaskState;
use taskfleet::store::{SettingsChange, TaskStore};
use testkit::{DynamoLocal, Proxy, RunLog, TestTable, generated_sheet};

use crate::support::{Agent, eventually, runlog_setup};

#[tokio::test]
async fn a_result_is_written_after_a_store_outage_longer_than_a_few_retries() {
    let ddb = DynamoLocal::start();
    let t = TestTable::on(&ddb.endpoint(), "outage").await;
    let log = RunLog::new();
    let settings = SettingsChange {
        lease: Some(Duration::from_secs(90)),
        max_attempts: Some(3),
        ..SettingsChange::default()
    };
    t.load_text("qc", &RunLog::script("2000"), &generated_sheet(1), settings)
        .await;
    let ((var, path), extra) = runlog_setup(&log);
    let mut args = vec!["--idle-timeout", "3s"];
    args.extend(extra.iter().map(String::as_str));
    let proxy = Proxy::start(&ddb.endpoint());
    let mut agent = Agent::spawn_at(
        &proxy.endpoint(),
        &t.name,
        t.dir.path(),
        "qc",
        &args,
        &[(var, path.as_str())],
    );
    eventually(Duration::from_secs(30), "the script to start", || async {
        (!log.runs().runs.is_empty()).then_some(())
    })
    .await;
    // The store is gone from before the script ends until well after it:
    // longer than any fixed handful of retries, shorter than the lease.
    proxy.refuse();
    tokio::time::sleep(Duration::from_secs(40)).await;
    proxy.restore();
    assert!(
        agent.wait(Duration::from_secs(120)).success(),
        "{}",
        agent.stderr()
    );
    let task = t.store.task("qc", "S0000000").await.unwrap().unwrap();
    assert_eq!(
        (task.state, task.attempt, task.failed_attempts),
        (TaskState::Done, 1, 0),
        "the result was dropped and the task run again: {:?}",
        task.history
    );
    assert_eq!(log.assert_no_overlap().get("S0000000"), Some(&1));
}

/// A store that answers, only slowly, while a script runs on the shortest
/// lease a step may have: each renewal has time to come back before the
/// kill point, so the script is not killed and run again.
#[tokio::test]
async fn a_slow_store_does_not_cost_a_short_lease_its_script() {
    let ddb = DynamoLocal::start();
    let t = TestTable::on(&ddb.endpoint(), "slowstore").await;
    let log = RunLog::new();
    let settings = SettingsChange {
        lease: Some(Duration::from_secs(3)),
        max_attempts: Some(3),
        ..SettingsChange::default()
    };
    t.load_text("qc", &RunLog::script("5000"), &generated_sheet(1), settings)
        .await;
    let ((var, path), extra) = runlog_setup(&log);
    let mut args = vec!["--idle-timeout", "2s", "--kill-grace", "1s"];
    args.extend(extra.iter().map(String::as_str));
    // Every answer, the claim's and each renewal's, 300 ms late: a tenth
    // of the lease.
    let proxy = Proxy::start(&ddb.endpoint());
    proxy.delay_answers(Duration::from_millis(300));
    let mut agent = Agent::spawn_at(
        &proxy.endpoint(),
        &t.name,
        t.dir.path(),
        "qc",
        &args,
        &[(var, path.as_str())],
    );
    assert!(
        agent.wait(Duration::from_secs(90)).success(),
        "{}",
        agent.stderr()
    );
    let task = t.store.task("qc", "S0000000").await.unwrap().unwrap();
    assert_eq!(
        (task.state, task.attempt, task.failed_attempts),
        (TaskState::Done, 1, 0),
        "the script was killed for renewals that were only slow: {:?}",
        task.history
    );
    assert_eq!(log.assert_no_overlap().get("S0000000"), Some(&1));
}
