//! A worker cut off from the store while another still reaches it: the
//! cut-off worker's scripts must be gone before the other reclaims their
//! tasks (contract invariant 10), so no task runs twice at the same time.

use std::time::{Duration, Instant};

use taskfleet::model::TaskState;
use taskfleet::store::{SettingsChange, TaskStore};
use testkit::{DynamoLocal, Proxy, RunLog, TestTable, generated_sheet};

use crate::support::{Agent, eventually, runlog_setup};

const LEASE: Duration = Duration::from_secs(6);
const CUT_FOR: Duration = Duration::from_secs(40);

#[tokio::test]
async fn a_worker_cut_off_from_the_store_kills_its_scripts_before_another_reclaims_its_tasks() {
    let ddb = DynamoLocal::start();
    let t = TestTable::on(&ddb.endpoint(), "partition").await;
    let log = RunLog::new();
    let settings = SettingsChange {
        lease: Some(LEASE),
        max_attempts: Some(5),
        ..SettingsChange::default()
    };
    t.load_text(
        "qc",
        &RunLog::script("25000"),
        &generated_sheet(4),
        settings,
    )
    .await;

    let proxy = Proxy::start(&ddb.endpoint());
    let ((var, path), extra) = runlog_setup(&log);
    let mut args = vec!["--slots", "4", "--idle-timeout", "5s"];
    args.extend(extra.iter().map(String::as_str));
    let env = [(var, path.as_str())];
    let mut cut_off = Agent::spawn_at(&proxy.endpoint(), &t.name, t.dir.path(), "qc", &args, &env);

    eventually(
        Duration::from_secs(30),
        "all four tasks to run on the first agent",
        || async {
            let running = t.store.status(Some("qc")).await.unwrap()[0].running;
            (running == 4 && log.runs().runs.len() == 4).then_some(())
        },
    )
    .await;
    proxy.cut();
    let cut_at = Instant::now();
    // The second agent reaches the store directly and reclaims the tasks
    // once their leases (and the skew margin) have run out.
    let mut other = Agent::spawn_at(&ddb.endpoint(), &t.name, t.dir.path(), "qc", &args, &env);
    tokio::time::sleep(CUT_FOR.saturating_sub(cut_at.elapsed())).await;
    proxy.restore();

    eventually(
        Duration::from_secs(120),
        "every task to be done",
        || async { (t.store.status(Some("qc")).await.unwrap()[0].done == 4).then_some(()) },
    )
    .await;
    for agent in [&mut cut_off, &mut other] {
        let status = agent.wait(Duration::from_secs(60));
        assert!(status.success(), "{status}: {}", agent.stderr());
    }

    let s = &t.store.status(Some("qc")).await.unwrap()[0];
    assert_eq!(
        (s.total, s.done, s.pending, s.running, s.failed),
        (4, 4, 0, 0, 0)
    );
    for i in 0..4 {
        let id = format!("S{i:07}");
        let task = t.store.task("qc", &id).await.unwrap().unwrap();
        assert_eq!(task.state, TaskState::Done, "{id}");
    }
    let runs = log.assert_no_overlap();
    assert_eq!(runs.len(), 4, "every task ran: {runs:?}");
}
