//! Several agent processes over one step, on each store.

use std::collections::HashMap;
use std::time::Duration;

use nix::sys::signal::Signal;
use taskfleet::load::{self, LoadRequest};
use taskfleet::model::{FailureClass, TaskState};
use taskfleet::sheet::{Sheet, SheetOptions};
use taskfleet::store::{SettingsChange, TaskStore};
use testkit::{Kind, TestStore, generated_sheet, load_text};

use crate::support::{Agent, SKEW_MARGIN, eventually, samples_2504};

/// Runs 4 agents with 2 slots each until the step is finished and checks
/// that every task ran exactly once.
async fn four_agents_run_each_task_once(t: &TestStore, expected: usize) {
    let out = t.dir.path().join("ran.txt");
    let out_s = out.display().to_string();
    let mut agents: Vec<Agent> = (0..4)
        .map(|_| {
            Agent::spawn_on(
                &t.locator,
                t.dir.path(),
                "align",
                &["--slots", "2", "--idle-timeout", "3s", "--pass-env", "OUT"],
                &[("OUT", &out_s)],
            )
        })
        .collect();
    for agent in &mut agents {
        let status = agent.wait(Duration::from_secs(600));
        assert!(status.success(), "{}", agent.stderr());
    }
    let s = &t.store.status(Some("align")).await.unwrap()[0];
    let n = expected as u64;
    assert_eq!(
        (s.total, s.done, s.pending, s.running, s.failed),
        (n, n, 0, 0, 0)
    );
    let ran = std::fs::read_to_string(&out).unwrap();
    let mut seen: HashMap<&str, usize> = HashMap::new();
    for id in ran.lines() {
        *seen.entry(id).or_default() += 1;
    }
    assert_eq!(seen.len(), expected, "every task ran");
    let twice: Vec<_> = seen.iter().filter(|&(_, &n)| n > 1).collect();
    assert!(twice.is_empty(), "tasks ran more than once: {twice:?}");
}

const APPEND_ID: &str = r#"echo "$TASK_ID" >> "$OUT""#;

#[tokio::test]
async fn four_agents_run_every_one_of_2504_tasks_exactly_once_on_dynamodb() {
    let t = TestStore::new(Kind::Dynamo, "fleet").await;
    let sheet = Sheet::read(&samples_2504(), &SheetOptions::default()).unwrap();
    let request = LoadRequest {
        step: "align".into(),
        script: APPEND_ID.into(),
        settings: SettingsChange::default(),
        replace: false,
        concurrency: 8,
    };
    load::load(&t.store, &load::prepare(request, sheet).unwrap(), &|_| {})
        .await
        .unwrap();
    four_agents_run_each_task_once(&t, 2504).await;
    let sample = t.store.task("align", "HG00098").await.unwrap().unwrap();
    assert_eq!((sample.state, sample.attempt), (TaskState::Done, 1));
}

#[tokio::test]
async fn four_local_agents_run_every_one_of_1000_tasks_exactly_once_on_the_embedded_store() {
    let t = TestStore::new(Kind::Sqlite, "fleet").await;
    load_text(
        &t.store,
        "align",
        APPEND_ID,
        &generated_sheet(1000),
        SettingsChange::default(),
    )
    .await;
    four_agents_run_each_task_once(&t, 1000).await;
}

#[tokio::test]
async fn an_agent_killed_on_the_embedded_store_loses_nothing() {
    let t = TestStore::new(Kind::Sqlite, "sqlkill").await;
    let script = r#"if [ "$ATTEMPT" = 1 ]; then sleep 15; fi; echo "done by attempt $ATTEMPT""#;
    let lease = SettingsChange {
        lease: Some(Duration::from_secs(3)),
        ..SettingsChange::default()
    };
    load_text(&t.store, "qc", script, "sample\nA\n", lease).await;
    let mut first = Agent::spawn_on(&t.locator, t.dir.path(), "qc", &[], &[]);
    eventually(
        Duration::from_secs(20),
        "the first agent to claim the task",
        || async {
            (t.store.task("qc", "A").await.unwrap().unwrap().state == TaskState::Running)
                .then_some(())
        },
    )
    .await;
    first.signal(Signal::SIGKILL);
    first.wait(Duration::from_secs(5));
    // The dead owner's last lease (a renewal it made just before it died
    // is in the file by now: SQLite writes are synchronous).
    let dead_lease = t
        .store
        .task("qc", "A")
        .await
        .unwrap()
        .unwrap()
        .lease_expires_at
        .unwrap();
    let mut second = Agent::spawn_on(
        &t.locator,
        t.dir.path(),
        "qc",
        &["--idle-timeout", "2s"],
        &[],
    );
    assert!(
        second.wait(Duration::from_secs(60)).success(),
        "{}",
        second.stderr()
    );
    let a = t.store.task("qc", "A").await.unwrap().unwrap();
    assert_eq!((a.state, a.attempt), (TaskState::Done, 2));
    assert_eq!(a.history[0].failure_class, Some(FailureClass::Lost));
    // The reclaiming claim started at least the skew margin after the
    // dead owner's lease expired.
    let reclaimed = a.started_at.unwrap();
    assert!(
        reclaimed.since(dead_lease) >= SKEW_MARGIN,
        "reclaimed {} ms after the lease expired, before the skew margin of {SKEW_MARGIN:?}",
        reclaimed.as_millis() - dead_lease.as_millis()
    );
}
