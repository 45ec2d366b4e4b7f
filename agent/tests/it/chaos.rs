//! Agents killed every two seconds and a store that hangs for longer than a
//! lease: every task still ends done, the counts are exact, and no task
//! ever runs twice at the same time.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use taskfleet::model::TaskState;
use taskfleet::store::{SettingsChange, TaskStore};
use testkit::{DynamoLocal, RunLog, TestStore, generated_sheet, load_text};

use crate::support::{Agent, runlog_setup};

const TASKS: u64 = 300;
const AGENTS: usize = 6;
const KILL_EVERY: Duration = Duration::from_secs(2);
const FREEZE_AT: Duration = Duration::from_secs(10);
/// Longer than the lease (6 s) and the skew margin together.
const FREEZE_FOR: Duration = Duration::from_secs(20);
/// The churn stops once every task is done, or after this long.
const CHURN_LIMIT: Duration = Duration::from_secs(240);

#[tokio::test]
async fn tasks_survive_agents_killed_every_two_seconds_and_a_store_frozen_longer_than_a_lease() {
    let ddb = DynamoLocal::start();
    let t = TestStore::on(&ddb.endpoint(), "chaos").await;
    let log = RunLog::new();
    // 1 to 3 s per task, fixed per task id.
    let script = RunLog::script("1000 + (10#${TASK_ID#S} * 7919) % 2001");
    let settings = SettingsChange {
        lease: Some(Duration::from_secs(6)),
        max_attempts: Some(10),
        ..SettingsChange::default()
    };
    load_text(
        &t.store,
        "qc",
        &script,
        &generated_sheet(TASKS as usize),
        settings,
    )
    .await;

    let ((var, path), extra) = runlog_setup(&log);
    let mut args = vec!["--slots", "3", "--idle-timeout", "5s"];
    args.extend(extra.iter().map(String::as_str));
    let env = [(var, path.as_str())];
    let spawn = || Agent::spawn_at(&ddb.endpoint(), &t.locator, t.dir.path(), "qc", &args, &env);

    let (mut fleet, kills) = churn(&ddb, &t, &spawn).await;
    let stuck = drain(&mut fleet).await;
    check(&t, &log, kills, &stuck).await;
}

/// Kills the oldest agent every [`KILL_EVERY`] and starts a new one,
/// freezes the store once, and stops once every task is done (or after
/// [`CHURN_LIMIT`]). Returns the agents left and how many were killed.
async fn churn(ddb: &DynamoLocal, t: &TestStore, spawn: &dyn Fn() -> Agent) -> (Vec<Agent>, usize) {
    let mut fleet: Vec<Agent> = (0..AGENTS).map(|_| spawn()).collect();
    let started = Instant::now();
    let mut frozen_at: Option<Instant> = None;
    let mut thawed = false;
    let mut kills = 0;
    loop {
        tokio::time::sleep(KILL_EVERY).await;
        // The oldest agent dies without warning; a new one takes its place.
        fleet.remove(0).kill();
        kills += 1;
        fleet.retain_mut(Agent::running);
        while fleet.len() < AGENTS {
            fleet.push(spawn());
        }
        match frozen_at {
            None if started.elapsed() >= FREEZE_AT => {
                ddb.freeze();
                frozen_at = Some(Instant::now());
                eprintln!("store frozen at {:?}", started.elapsed());
            }
            Some(at) if !thawed && at.elapsed() >= FREEZE_FOR => {
                ddb.thaw();
                thawed = true;
                eprintln!("store thawed at {:?}", started.elapsed());
            }
            _ => {}
        }
        // Never ask a frozen store: the request would hang.
        if thawed {
            let status = tokio::time::timeout(Duration::from_secs(10), t.store.status(Some("qc")))
                .await
                .ok()
                .and_then(Result::ok);
            if let Some(s) = status.as_ref().and_then(|s| s.first()) {
                eprintln!(
                    "{:?}: {} done, {} running, {} pending, {} failed",
                    started.elapsed(),
                    s.done,
                    s.running,
                    s.pending,
                    s.failed
                );
                if s.done + s.failed >= TASKS {
                    break;
                }
            }
        }
        if started.elapsed() > CHURN_LIMIT {
            eprintln!("churn stopped after {CHURN_LIMIT:?} with tasks left");
            break;
        }
    }
    (fleet, kills)
}

/// Waits for the survivors to leave by themselves (nothing claimable,
/// nothing running); returns the stderr of those that did not exit 0.
async fn drain(fleet: &mut [Agent]) -> Vec<String> {
    let deadline = Instant::now() + Duration::from_secs(180);
    let mut stuck = Vec::new();
    for agent in fleet {
        while agent.running() && Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
        if agent.running() {
            agent.kill();
            stuck.push(agent.stderr());
        } else if !agent.child.wait().unwrap().success() {
            stuck.push(agent.stderr());
        }
    }
    stuck
}

/// Every task done, exact counts, no overlapping runs, every agent gone.
async fn check(t: &TestStore, log: &RunLog, kills: usize, stuck: &[String]) {
    let s = &t.store.status(Some("qc")).await.unwrap()[0];
    let tasks = t.tasks("qc").await;
    let mut by_state: BTreeMap<TaskState, u64> = BTreeMap::new();
    for task in &tasks {
        *by_state.entry(task.state).or_default() += 1;
    }
    let said = |state| by_state.get(&state).copied().unwrap_or(0);
    let runs = log.runs();
    eprintln!(
        "{kills} agents killed; status {s:?}; tasks by state {by_state:?}; {} runs, {} without an end",
        runs.runs.len(),
        runs.runs.iter().filter(|r| !r.ended).count()
    );
    assert_eq!(
        (s.total, s.done, s.pending, s.running, s.failed),
        (TASKS, TASKS, 0, 0, 0),
        "status counts"
    );
    assert_eq!(tasks.len() as u64, TASKS, "stored tasks");
    assert_eq!(
        (
            said(TaskState::Done),
            said(TaskState::Pending),
            said(TaskState::Running),
            said(TaskState::Failed)
        ),
        (s.done, s.pending, s.running, s.failed),
        "status against the tasks themselves"
    );
    for task in &tasks {
        assert!(
            runs.of(&task.task_id)
                .iter()
                .any(|r| r.attempt == task.attempt && r.ended),
            "{} is done with attempt {}, but no run of that attempt finished: {:?}",
            task.task_id,
            task.attempt,
            runs.of(&task.task_id)
        );
    }
    log.assert_no_overlap();
    assert!(
        stuck.is_empty(),
        "{} agents did not exit 0 by themselves; stderr of the first:\n{}",
        stuck.len(),
        stuck[0]
    );
}
