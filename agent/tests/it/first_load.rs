//! A new step's first load on DynamoDB: plain batch writes under the
//! step's lock, counted behind them; other loads wait for it, a dead one's
//! lock is taken over after a recount, and an answer lost on the way back
//! neither loses nor doubles a task.

use std::path::Path;
use std::time::{Duration, Instant};

use taskfleet::DynamoStore;
use taskfleet::load::{self, LoadReport, LoadRequest};
use taskfleet::model::{LoadLock, NewTask};
use taskfleet::schema;
use taskfleet::sheet::{Sheet, SheetOptions};
use taskfleet::store::{SettingsChange, TaskStore, new_pending_task};
use taskfleet::time::Timestamp;
use testkit::{Kind, Proxy, RequestCounter, TestStore, client_on, generated_sheet};

/// The test's table through a client that counts requests per operation.
fn counted(t: &TestStore, counter: &RequestCounter) -> DynamoStore {
    let endpoint = t.endpoint.clone().expect("a DynamoDB store");
    DynamoStore::new(client_on(&endpoint, counter), &t.locator, endpoint)
}

async fn load_sheet<S: TaskStore>(store: &S, step: &str, text: &str) -> LoadReport {
    let sheet = Sheet::parse(
        Path::new("s.csv"),
        text.as_bytes(),
        &SheetOptions::default(),
    )
    .expect("valid sheet");
    let request = LoadRequest {
        step: step.into(),
        script: "true".into(),
        settings: SettingsChange::default(),
        replace: false,
        concurrency: 8,
    };
    let prepared = load::prepare(request, sheet).expect("valid load");
    load::load(store, &prepared, &|_| {}).await.expect("load")
}

/// The counted total, the tasks stored, and whether a lock is left.
async fn outcome(t: &TestStore, step: &str) -> (u64, usize, bool) {
    let total = t.store.status(Some(step)).await.unwrap()[0].total;
    let tasks = t.tasks(step).await;
    let mut ids: Vec<&str> = tasks.iter().map(|t| t.task_id.as_str()).collect();
    ids.sort_unstable();
    ids.dedup();
    assert_eq!(ids.len(), tasks.len(), "a task is stored twice");
    let locked = t
        .store
        .step(step)
        .await
        .unwrap()
        .unwrap()
        .first_load
        .is_some();
    (total, tasks.len(), locked)
}

/// A first-load lock, ten minutes from lapsing, of a process of this host
/// that has exited.
fn lock_of_a_gone_process() -> LoadLock {
    let mut gone = std::process::Command::new("true").spawn().unwrap();
    let pid = gone.id();
    gone.wait().unwrap();
    LoadLock::for_process(pid, Timestamp::now().plus(Duration::from_secs(600)))
}

/// The tasks of `rows` generated rows that fall in `shard` of `shards`.
fn tasks_in_shard(rows: usize, shard: u16, shards: u16) -> Vec<taskfleet::Task> {
    (0..rows)
        .map(|i| NewTask {
            task_id: format!("S{i:07}"),
            line: i as u64 + 2,
            env: [("SAMPLE".to_owned(), format!("S{i:07}"))].into(),
        })
        .filter(|row| schema::shard_of(&row.task_id, shards) == shard)
        .map(|row| new_pending_task("qc", "true", "digest", &row, Timestamp::now()))
        .collect()
}

#[tokio::test]
async fn a_new_steps_first_load_puts_plain_batches_counts_them_and_frees_the_step() {
    let t = TestStore::new(Kind::Dynamo, "first-load").await;
    let counter = RequestCounter::default();
    let store = counted(&t, &counter);
    let report = load_sheet(&store, "qc", &generated_sheet(3000)).await;
    assert!(report.step_created);
    assert_eq!((report.loaded, report.skipped_existing), (3000, 0));
    assert!(
        counter.of("BatchWriteItem") >= 3000 / 25,
        "{} plain batches",
        counter.of("BatchWriteItem")
    );
    assert_eq!(outcome(&t, "qc").await, (3000, 3000, false));

    // The step exists now: a second load inserts with conditions.
    counter.reset();
    let again = load_sheet(&store, "qc", &generated_sheet(3000)).await;
    assert_eq!((again.loaded, again.skipped_existing), (0, 3000));
    assert_eq!(counter.of("BatchWriteItem"), 0);
    assert!(counter.of("TransactWriteItems") > 0);
    assert_eq!(outcome(&t, "qc").await, (3000, 3000, false));
}

#[tokio::test]
async fn the_lock_of_a_first_load_that_died_elsewhere_is_waited_out_then_the_step_recounted() {
    let t = TestStore::new(Kind::Dynamo, "dead-elsewhere").await;
    let lock = LoadLock {
        holder: "another-host:4026531836:4242:0".into(),
        // Past the margin plain puts keep before a lock lapses.
        until: Timestamp::now().plus(Duration::from_secs(12)),
    };
    let (meta, _) = t
        .store
        .ensure_step_for_load("qc", &SettingsChange::default(), &lock)
        .await
        .unwrap();
    assert_eq!(meta.first_load.as_ref(), Some(&lock));
    // It wrote the tasks of one shard and died before counting them.
    let written = tasks_in_shard(1000, 3, meta.shards);
    let uncounted = t.store.put_first(&meta, &lock, &written).await.unwrap();
    assert_eq!(uncounted, written.len());
    assert_eq!(t.store.status(Some("qc")).await.unwrap()[0].total, 0);

    let started = Instant::now();
    let report = load_sheet(&t.store, "qc", &generated_sheet(1000)).await;
    assert!(
        started.elapsed() >= Duration::from_secs(9),
        "the lock was not waited out: {:?}",
        started.elapsed()
    );
    assert!(!report.step_created);
    assert_eq!(
        (report.loaded, report.skipped_existing),
        (1000 - written.len(), written.len())
    );
    assert_eq!(outcome(&t, "qc").await, (1000, 1000, false));
}

#[tokio::test]
async fn the_lock_of_a_first_load_whose_process_is_gone_from_this_host_is_taken_without_waiting_it_out()
 {
    let t = TestStore::new(Kind::Dynamo, "dead-here").await;
    let lock = lock_of_a_gone_process();
    assert!(lock.holder_is_gone());
    let (meta, _) = t
        .store
        .ensure_step_for_load("qc", &SettingsChange::default(), &lock)
        .await
        .unwrap();
    let written = tasks_in_shard(500, 0, meta.shards);
    t.store.put_first(&meta, &lock, &written).await.unwrap();

    let started = Instant::now();
    let report = load_sheet(&t.store, "qc", &generated_sheet(500)).await;
    // Not the ten minutes of the lock: the settling time a dead load's
    // requests get to land.
    assert!(started.elapsed() < Duration::from_secs(60));
    assert_eq!(report.loaded, 500 - written.len());
    assert_eq!(outcome(&t, "qc").await, (500, 500, false));
}

#[tokio::test]
async fn an_answer_lost_on_the_way_back_neither_loses_nor_doubles_a_task() {
    let proxy = Proxy::start(&testkit::endpoint());
    let t = TestStore::on(&proxy.endpoint(), "lost-answer").await;
    let lock = LoadLock::new(Timestamp::now().plus(Duration::from_secs(60)));
    let one_shard = SettingsChange {
        shards: Some(1),
        ..SettingsChange::default()
    };
    let (meta, _) = t
        .store
        .ensure_step_for_load("qc", &one_shard, &lock)
        .await
        .unwrap();
    let tasks = tasks_in_shard(25, 0, 1);
    // The batch reaches the store; its answer never comes back. The puts
    // are not sent again: the tasks are inserted with conditions, found
    // written, and counted as this load's.
    proxy.drop_answers();
    let (written, ()) = tokio::join!(t.store.put_first(&meta, &lock, &tasks), async {
        tokio::time::sleep(Duration::from_secs(1)).await;
        proxy.restore();
    });
    assert_eq!(written.unwrap(), 25);
    let deltas: Vec<(&'static str, i64)> = taskfleet::transition::insert(&tasks[0])
        .counters
        .iter()
        .map(|(c, by)| (*c, by * 25))
        .collect();
    t.store
        .count_first(
            &meta,
            &lock,
            Timestamp::now().plus(Duration::from_secs(60)),
            &[(0, deltas)],
        )
        .await
        .unwrap();
    t.store.end_first_load(&meta, &lock).await.unwrap();
    assert_eq!(outcome(&t, "qc").await, (25, 25, false));
    let stored = t.tasks("qc").await;
    assert!(
        stored
            .iter()
            .all(|t| t.attempt == 0 && t.history.is_empty())
    );
}

#[tokio::test]
async fn an_agent_stays_while_a_dead_first_load_leaves_tasks_uncounted_and_runs_them_once_recounted()
 {
    let t = TestStore::new(Kind::Dynamo, "uncounted").await;
    let lock = lock_of_a_gone_process();
    let (meta, _) = t
        .store
        .ensure_step_for_load("qc", &SettingsChange::default(), &lock)
        .await
        .unwrap();
    let written = tasks_in_shard(300, 2, meta.shards);
    t.store.put_first(&meta, &lock, &written).await.unwrap();
    assert_eq!(t.store.status(Some("qc")).await.unwrap()[0].total, 0);

    // The counters say the step is empty; the lock left on it says they
    // may trail its tasks, so the agent does not go home.
    let dir = tempfile::tempdir().unwrap();
    let mut cfg = agent::AgentConfig::new("qc", "h/w", env!("CARGO_BIN_EXE_agent"));
    cfg.work_dir = dir.path().join("work");
    cfg.log_dir = dir.path().join("logs");
    cfg.idle_timeout = Some(Duration::from_secs(2));
    cfg.poll_max = Duration::from_secs(1);
    let endpoint = t.endpoint.clone().expect("a DynamoDB store");
    let store = std::sync::Arc::new(DynamoStore::new(
        client_on(&endpoint, &RequestCounter::default()),
        &t.locator,
        endpoint,
    ));
    let run = tokio::spawn(agent::run(
        store,
        cfg,
        agent::Shutdown::new(),
        std::sync::Arc::new(agent::Stats::default()),
    ));
    tokio::time::sleep(Duration::from_secs(8)).await;
    assert!(
        !run.is_finished(),
        "the agent left a step whose counters may trail its tasks"
    );
    // The next load recounts; the agent then runs every task and leaves.
    load_sheet(&t.store, "qc", &generated_sheet(300)).await;
    let exit = tokio::time::timeout(Duration::from_secs(120), run)
        .await
        .expect("the agent did not finish the step")
        .unwrap()
        .unwrap();
    assert_eq!(exit, agent::Exit::Idle);
    let tasks = t.tasks("qc").await;
    assert_eq!(tasks.len(), 300);
    assert!(
        tasks
            .iter()
            .all(|t| t.state == taskfleet::model::TaskState::Done && t.attempt == 1),
        "every task done at its first attempt"
    );
}
