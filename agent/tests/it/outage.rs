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

/// One task on DynamoDB Local, with a relay in front of it for the agent.
struct OneTask {
    // Kept for the test's length: dropping it stops the emulator.
    _ddb: DynamoLocal,
    t: TestTable,
    log: RunLog,
    proxy: Proxy,
}

impl OneTask {
    /// Loads one task whose script takes `script_ms`, on a `lease`.
    async fn load(name: &str, lease: Duration, script_ms: &str) -> Self {
        let ddb = DynamoLocal::start();
        let t = TestTable::on(&ddb.endpoint(), name).await;
        let log = RunLog::new();
        let settings = SettingsChange {
            lease: Some(lease),
            max_attempts: Some(3),
            ..SettingsChange::default()
        };
        t.load_text(
            "qc",
            &RunLog::script(script_ms),
            &generated_sheet(1),
            settings,
        )
        .await;
        let proxy = Proxy::start(&ddb.endpoint());
        Self {
            _ddb: ddb,
            t,
            log,
            proxy,
        }
    }

    /// An agent on the task's step, through the relay, with `args`.
    fn agent(&self, args: &[&str]) -> Agent {
        let ((var, path), extra) = runlog_setup(&self.log);
        let mut args = args.to_vec();
        args.extend(extra.iter().map(String::as_str));
        Agent::spawn_at(
            &self.proxy.endpoint(),
            &self.t.name,
            self.t.dir.path(),
            "qc",
            &args,
            &[(var, path.as_str())],
        )
    }

    /// The task ran once, and is done on its first attempt; `why` says
    /// what it means otherwise.
    async fn assert_done_once(&self, why: &str) {
        let task = self.t.store.task("qc", "S0000000").await.unwrap().unwrap();
        assert_eq!(
            (task.state, task.attempt, task.failed_attempts),
            (TaskState::Done, 1, 0),
            "{why}: {:?}",
            task.history
        );
        assert_eq!(self.log.assert_no_overlap().get("S0000000"), Some(&1));
    }
}

#[tokio::test]
async fn a_result_is_written_after_a_store_outage_longer_than_a_few_retries() {
    let one = OneTask::load("outage", Duration::from_secs(90), "2000").await;
    let mut agent = one.agent(&["--idle-timeout", "3s"]);
    eventually(Duration::from_secs(30), "the script to start", || async {
        (!one.log.runs().runs.is_empty()).then_some(())
    })
    .await;
    // The store is gone from before the script ends until well after it:
    // longer than any fixed handful of retries, shorter than the lease.
    one.proxy.refuse();
    tokio::time::sleep(Duration::from_secs(40)).await;
    one.proxy.restore();
    assert!(
        agent.wait(Duration::from_secs(120)).success(),
        "{}",
        agent.stderr()
    );
    one.assert_done_once("the result was dropped and the task run again")
        .await;
}

/// A store that answers, only slowly, while a script runs on the shortest
/// lease a step may have: each renewal has time to come back before the
/// kill point, so the script is not killed and run again.
#[tokio::test]
async fn a_slow_store_does_not_cost_a_short_lease_its_script() {
    let one = OneTask::load("slowstore", Duration::from_secs(3), "5000").await;
    // Every answer, the claim's and each renewal's, 300 ms late: a tenth
    // of the lease.
    one.proxy.delay_answers(Duration::from_millis(300));
    let mut agent = one.agent(&["--idle-timeout", "2s", "--kill-grace", "1s"]);
    assert!(
        agent.wait(Duration::from_secs(90)).success(),
        "{}",
        agent.stderr()
    );
    one.assert_done_once("the script was killed for renewals that were only slow")
        .await;
}
