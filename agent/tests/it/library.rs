//! The claim loop and the lease guard at library level, over a store whose
//! lease writes can be made to hang forever. The idle rules run with
//! paused time, so their timings are exact and cost no real time; the
//! lease guard runs a real script, so it runs in real time (seconds).

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use agent::runner::{AttemptEnd, run_attempt};
use agent::{AgentConfig, Exit, Shutdown, Stats};
use taskfleet::model::{FailedTask, StepMeta, StepStatus, Task, TaskState};
use taskfleet::store::sqlite::SqliteStore;
use taskfleet::store::{
    Candidate, Claim, Correction, Fence, Finish, InsertOutcome, Order, ReplaceOutcome,
    SettingsChange, StepChange, StoreError, TaskStore,
};
use taskfleet::time::Timestamp;
use tokio::time::Instant;

/// The embedded store, whose lease writes can be made to hang forever, as
/// they do behind a broken network path.
struct Hang {
    inner: SqliteStore,
    renewals: AtomicBool,
}

impl Hang {
    async fn hang_if(&self, on: &AtomicBool) {
        if on.load(Ordering::SeqCst) {
            std::future::pending::<()>().await;
        }
    }
}

impl TaskStore for Hang {
    fn describe(&self) -> String {
        self.inner.describe()
    }
    async fn ensure_step(
        &self,
        step: &str,
        change: &SettingsChange,
    ) -> Result<(StepMeta, StepChange), StoreError> {
        self.inner.ensure_step(step, change).await
    }
    async fn insert(&self, meta: &StepMeta, tasks: &[Task]) -> Result<InsertOutcome, StoreError> {
        self.inner.insert(meta, tasks).await
    }
    async fn replace(
        &self,
        meta: &StepMeta,
        old: &Task,
        new: &Task,
    ) -> Result<ReplaceOutcome, StoreError> {
        self.inner.replace(meta, old, new).await
    }
    async fn recount(&self, meta: &StepMeta, apply: bool) -> Result<Vec<Correction>, StoreError> {
        self.inner.recount(meta, apply).await
    }
    async fn status(&self, step: Option<&str>) -> Result<Vec<StepStatus>, StoreError> {
        self.inner.status(step).await
    }
    async fn failed(
        &self,
        step: Option<&str>,
        limit: usize,
    ) -> Result<Vec<FailedTask>, StoreError> {
        self.inner.failed(step, limit).await
    }
    async fn task(&self, step: &str, task_id: &str) -> Result<Option<Task>, StoreError> {
        self.inner.task(step, task_id).await
    }
    async fn step(&self, step: &str) -> Result<Option<StepMeta>, StoreError> {
        self.inner.step(step).await
    }
    async fn retry(
        &self,
        meta: &StepMeta,
        task_id: &str,
        attempt: u32,
        by: &str,
    ) -> Result<ReplaceOutcome, StoreError> {
        self.inner.retry(meta, task_id, attempt, by).await
    }
    async fn cancel(
        &self,
        meta: &StepMeta,
        task: &Task,
        by: &str,
    ) -> Result<ReplaceOutcome, StoreError> {
        self.inner.cancel(meta, task, by).await
    }
    async fn steps(&self) -> Result<Vec<StepMeta>, StoreError> {
        self.inner.steps().await
    }
    async fn remove_step(&self, meta: &StepMeta) -> Result<(), StoreError> {
        self.inner.remove_step(meta).await
    }
    async fn find(&self, task_id: &str) -> Result<Vec<taskfleet::model::TaskSummary>, StoreError> {
        self.inner.find(task_id).await
    }
    async fn shard_page(
        &self,
        meta: &StepMeta,
        shard: u16,
        after: Option<&str>,
        limit: usize,
    ) -> Result<taskfleet::model::TaskPage, StoreError> {
        self.inner.shard_page(meta, shard, after, limit).await
    }
    async fn record_load(
        &self,
        step: &str,
        record: &taskfleet::model::LoadRecord,
    ) -> Result<(), StoreError> {
        self.inner.record_load(step, record).await
    }
    async fn loads(
        &self,
        step: &str,
        limit: usize,
    ) -> Result<Vec<taskfleet::model::LoadRecord>, StoreError> {
        self.inner.loads(step, limit).await
    }
    async fn running(
        &self,
        meta: &StepMeta,
    ) -> Result<Vec<taskfleet::store::RunningTask>, StoreError> {
        self.inner.running(meta).await
    }
    async fn open_per_shard(&self, meta: &StepMeta) -> Result<Vec<u64>, StoreError> {
        self.inner.open_per_shard(meta).await
    }
    async fn candidates(
        &self,
        meta: &StepMeta,
        shard: u16,
        state: TaskState,
        now: Timestamp,
        limit: usize,
        order: Order,
    ) -> Result<Vec<Candidate>, StoreError> {
        self.inner
            .candidates(meta, shard, state, now, limit, order)
            .await
    }
    async fn claim(
        &self,
        meta: &StepMeta,
        candidate: &Candidate,
        owner: &str,
        now: Timestamp,
    ) -> Result<Claim, StoreError> {
        self.inner.claim(meta, candidate, owner, now).await
    }
    async fn reclaim(
        &self,
        meta: &StepMeta,
        old: &Task,
        owner: &str,
        now: Timestamp,
    ) -> Result<Claim, StoreError> {
        self.inner.reclaim(meta, old, owner, now).await
    }
    async fn heartbeat(
        &self,
        meta: &StepMeta,
        task: &Task,
        until: Timestamp,
    ) -> Result<Fence, StoreError> {
        self.hang_if(&self.renewals).await;
        self.inner.heartbeat(meta, task, until).await
    }
    async fn finish(
        &self,
        meta: &StepMeta,
        task: &Task,
        finish: &Finish,
    ) -> Result<Fence, StoreError> {
        self.inner.finish(meta, task, finish).await
    }
}

async fn store_with(dir: &tempfile::TempDir, sheet: &str, lease_secs: u64) -> Hang {
    let (inner, _) = SqliteStore::init(&dir.path().join("tasks.db")).unwrap();
    let settings = SettingsChange {
        lease: Some(Duration::from_secs(lease_secs)),
        ..SettingsChange::default()
    };
    testkit::load_text(&inner, "qc", "sleep 600", sheet, settings).await;
    Hang {
        inner,
        renewals: AtomicBool::new(false),
    }
}

/// Claims task A of step qc for `owner`.
async fn claim_a(store: &Hang, owner: &str) -> (StepMeta, Task) {
    let meta = store.step("qc").await.unwrap().unwrap();
    let candidate = Candidate {
        task_id: "A".into(),
        state: TaskState::Pending,
        attempt: 0,
        state_at: taskfleet::time::Timestamp::from_millis(0),
    };
    match store
        .claim(&meta, &candidate, owner, Timestamp::now())
        .await
        .unwrap()
    {
        Claim::Claimed(task) => (meta, *task),
        other => panic!("A is not claimable: {other:?}"),
    }
}

fn config(dir: &tempfile::TempDir, owner: &str) -> AgentConfig {
    let mut cfg = AgentConfig::new("qc", owner, env!("CARGO_BIN_EXE_agent"));
    cfg.work_dir = dir.path().join("work");
    cfg.log_dir = dir.path().join("logs");
    cfg
}

#[tokio::test]
async fn a_renewal_that_never_answers_kills_the_script_before_its_lease_expires() {
    let dir = tempfile::tempdir().unwrap();
    let store = store_with(&dir, "sample\nA\n", 6).await;
    let (meta, task) = claim_a(&store, "h/w").await;
    store.renewals.store(true, Ordering::SeqCst);
    let started = Instant::now();
    let end = tokio::time::timeout(
        Duration::from_secs(60),
        run_attempt(
            &store,
            &meta,
            &config(&dir, "h/w"),
            &Shutdown::new(),
            &Stats::default(),
            task,
        ),
    )
    .await
    .expect("the attempt must end although its renewal never answers");
    let took = started.elapsed();
    assert!(matches!(end, AttemptEnd::Lost), "{end:?}");
    // Dead before the 6 s lease expires, with the safety margin to spare.
    assert!(
        took + agent::lease::SAFETY <= Duration::from_secs(6),
        "the script ran {took:?} into a 6 s lease"
    );
    // Nothing was written: the task is left to expire and be reclaimed.
    let a = store.task("qc", "A").await.unwrap().unwrap();
    assert_eq!((a.state, a.attempt), (TaskState::Running, 1));
}

/// A store whose step's one task, A, is done: nothing is left.
async fn finished_step(dir: &tempfile::TempDir) -> Arc<Hang> {
    let store = Arc::new(store_with(dir, "sample\nA\n", 60).await);
    let (meta, task) = claim_a(&store, "x/w").await;
    let now = Timestamp::now();
    let done = Finish {
        next: TaskState::Done,
        counts_as_failure: false,
        ready_at: now,
        record: taskfleet::model::AttemptRecord {
            attempt: 1,
            owner: "x/w".into(),
            started_at: now,
            finished_at: now,
            outcome: TaskState::Done,
            exit_code: Some(0),
            signal: None,
            failure_class: None,
            log_uri: None,
            provenance: None,
        },
        output_tail: None,
        escalate_to: None,
        expires_at: None,
    };
    assert_eq!(
        store.finish(&meta, &task, &done).await.unwrap(),
        Fence::Held
    );
    store
}

#[tokio::test(start_paused = true)]
async fn an_idle_agent_exits_after_its_idle_timeout_and_not_before() {
    let dir = tempfile::tempdir().unwrap();
    let store = finished_step(&dir).await;
    let mut cfg = config(&dir, "h/w");
    cfg.idle_timeout = Some(Duration::from_secs(120));
    let started = Instant::now();
    let exit = agent::run(store, cfg, Shutdown::new(), Arc::new(Stats::default()))
        .await
        .unwrap();
    assert_eq!(exit, Exit::Idle);
    let took = started.elapsed();
    assert!(
        took >= Duration::from_secs(120) && took < Duration::from_secs(121),
        "idle exit after {took:?}"
    );
}

#[tokio::test(start_paused = true)]
async fn an_idle_agent_stays_while_a_task_of_its_step_runs_elsewhere() {
    let dir = tempfile::tempdir().unwrap();
    let store = Arc::new(store_with(&dir, "sample\nA\n", 3600).await);
    // Another worker holds the task with a long lease.
    claim_a(&store, "other/w").await;
    let mut cfg = config(&dir, "h/w");
    cfg.idle_timeout = Some(Duration::from_secs(5));
    let run = agent::run(store, cfg, Shutdown::new(), Arc::new(Stats::default()));
    assert!(
        tokio::time::timeout(Duration::from_secs(300), run)
            .await
            .is_err(),
        "the agent left while a task of its step could still need reclaiming"
    );
}

#[tokio::test(start_paused = true)]
async fn an_idle_agent_on_a_finished_step_reads_the_counters_once_a_poll_and_queries_no_shard() {
    let dir = tempfile::tempdir().unwrap();
    let store = finished_step(&dir).await;
    let mut cfg = config(&dir, "h/w");
    cfg.idle_timeout = Some(Duration::from_secs(120));
    let stats = Arc::new(Stats::default());
    let exit = agent::run(store, cfg, Shutdown::new(), stats.clone())
        .await
        .unwrap();
    assert_eq!(exit, Exit::Idle);
    let calls = stats.report();
    // Waits grow from half a second to 20 s: about ten polls in 120 s, and
    // the last one's read also tells the agent it may leave. One read of
    // the step confirms that no first load died before counting its tasks;
    // the index is asked only then (see first_load.rs).
    assert_eq!(
        (
            calls.candidate_queries,
            calls.claims_won + calls.claims_lost
        ),
        (0, 0),
        "an empty step has no shard worth a query: {calls:?}"
    );
    assert!(
        (2..=17).contains(&calls.other_reads),
        "one read of the counters per poll, and the step once: {calls:?}"
    );
}

#[tokio::test(start_paused = true)]
async fn an_idle_agent_queries_only_the_shard_whose_task_runs_elsewhere() {
    let dir = tempfile::tempdir().unwrap();
    let store = Arc::new(store_with(&dir, "sample\nA\n", 3600).await);
    claim_a(&store, "other/w").await;
    let mut cfg = config(&dir, "h/w");
    cfg.idle_timeout = Some(Duration::from_secs(5));
    let stats = Arc::new(Stats::default());
    let run = agent::run(store, cfg, Shutdown::new(), stats.clone());
    assert!(
        tokio::time::timeout(Duration::from_secs(300), run)
            .await
            .is_err(),
        "the agent left while a task of its step could still need reclaiming"
    );
    let calls = stats.report();
    // Per poll: the counters, then the pending tasks of A's shard (of 16).
    // Its running tasks once: the lease (an hour) cannot run out sooner.
    assert!(calls.other_reads >= 10, "{calls:?}");
    assert!(
        calls.candidate_queries <= calls.other_reads + 1,
        "queries of shards with nothing open, or of leases that cannot have run out: {calls:?}"
    );
}

#[tokio::test]
async fn an_agent_reports_when_its_last_final_write_was_taken() {
    let dir = tempfile::tempdir().unwrap();
    let (store, _) = SqliteStore::init(&dir.path().join("tasks.db")).unwrap();
    testkit::load_text(
        &store,
        "qc",
        "true",
        "sample\nA\nB\n",
        SettingsChange::default(),
    )
    .await;
    let mut cfg = config(&dir, "h/w");
    let idle = Duration::from_millis(600);
    cfg.idle_timeout = Some(idle);
    let before = Timestamp::now();
    let stats = Arc::new(Stats::default());
    let exit = agent::run(Arc::new(store), cfg, Shutdown::new(), stats.clone())
        .await
        .unwrap();
    let after = Timestamp::now();
    let calls = stats.report();
    assert_eq!(
        (exit, calls.claims_won, calls.finishes),
        (Exit::Idle, 2, 2),
        "{calls:?}"
    );
    let last = calls.last_finish_at.expect("two final writes were taken");
    // The last task ended once the agent had run both, and the agent then
    // waited out most of its idle timeout: the time is the write's, not
    // the exit's.
    assert!(last >= before, "{last:?} is before the agent started");
    assert!(last <= after, "{last:?} is after the agent exited");
    let waited = after.since(last);
    assert!(
        waited >= idle / 2,
        "the last final write is only {waited:?} before the agent exited idle"
    );
}
