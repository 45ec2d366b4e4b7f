//! Two loads of the same sheet at once, while agents claim and run its
//! tasks: loading is idempotent (contract invariant 6) even when the loads
//! race each other and the workers, on each store.

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;
use std::time::Duration;

use taskfleet::load::{self, LoadRequest};
use taskfleet::sheet::{Sheet, SheetOptions};
use taskfleet::store::{SettingsChange, TaskStore};
use taskfleet::{Task, TaskState};
use testkit::{Kind, RunLog, TestStore, generated_sheet};

use crate::support::{Agent, runlog_setup};

const ROWS: usize = 10_000;

mod two_loads_of_one_sheet_racing_each_other_and_two_agents_write_each_task_once_and_reset_none {
    use super::*;

    #[tokio::test]
    async fn dynamodb() {
        super::racing_loads(TestStore::new(Kind::Dynamo, "loadrace").await).await;
    }

    #[tokio::test]
    async fn sqlite() {
        super::racing_loads(TestStore::new(Kind::Sqlite, "loadrace").await).await;
    }
}

async fn racing_loads(t: TestStore) {
    let log = RunLog::new();
    let step = "qc";
    // The agents start first (on an empty step) so that they claim tasks
    // from the first batches while the loads still write.
    t.store
        .ensure_step(step, &SettingsChange::default())
        .await
        .unwrap();
    let ((var, path), extra) = runlog_setup(&log);
    let mut args = vec!["--slots", "4", "--idle-timeout", "10s"];
    args.extend(extra.iter().map(String::as_str));
    let env = [(var, path.as_str())];
    let mut agents: Vec<Agent> = (0..2)
        .map(|_| Agent::spawn_on(&t.locator, t.dir.path(), step, &args, &env))
        .collect();

    let sheet = Sheet::parse(
        Path::new("race.csv"),
        generated_sheet(ROWS).as_bytes(),
        &SheetOptions::default(),
    )
    .unwrap();
    let request = LoadRequest {
        step: step.into(),
        script: RunLog::script("0"),
        settings: SettingsChange::default(),
        replace: false,
        concurrency: 8,
    };
    let prepared = load::prepare(request, sheet).unwrap();
    let other = t.other_handle();
    let (first, second) = tokio::join!(
        load::load(&t.store, &prepared, &|_| {}),
        load::load(&other, &prepared, &|_| {})
    );
    let reports = [first.unwrap(), second.unwrap()];

    for agent in &mut agents {
        let status = agent.wait(Duration::from_secs(900));
        assert!(status.success(), "{status}: {}", agent.stderr());
    }

    let mut problems = Vec::new();
    let loaded: usize = reports.iter().map(|r| r.loaded).sum();
    let skipped: usize = reports.iter().map(|r| r.skipped_existing).sum();
    if (loaded, skipped) != (ROWS, ROWS) {
        problems.push(format!(
            "the two loads reported {loaded} loaded and {skipped} skipped in all, not {ROWS} of each: {reports:?}"
        ));
    }
    let tasks = t.tasks(step).await;
    problems.extend(store_problems(&t, step, &tasks).await);
    problems.extend(run_problems(&tasks, &log));
    assert!(
        problems.is_empty(),
        "{:?} store, two racing loads of {ROWS} rows:\n  - {}",
        t.kind,
        problems.join("\n  - ")
    );
}

/// What the status and the stored items say, against one done task per row.
async fn store_problems(t: &TestStore, step: &str, tasks: &[Task]) -> Vec<String> {
    let mut problems = Vec::new();
    let s = &t.store.status(Some(step)).await.unwrap()[0];
    let n = ROWS as u64;
    if (s.total, s.done, s.pending, s.running, s.failed) != (n, n, 0, 0, 0) {
        problems.push(format!(
            "status says total {}, done {}, pending {}, running {}, failed {}; expected {n} loaded and done",
            s.total, s.done, s.pending, s.running, s.failed
        ));
    }
    let ids: BTreeSet<&str> = tasks.iter().map(|t| t.task_id.as_str()).collect();
    if tasks.len() != ROWS || ids.len() != ROWS {
        problems.push(format!(
            "{} task items for {} task ids; expected {ROWS} of each",
            tasks.len(),
            ids.len()
        ));
    }
    let not_done = tasks.iter().filter(|t| t.state != TaskState::Done).count();
    if not_done > 0 {
        problems.push(format!("{not_done} tasks are not done"));
    }
    problems
}

/// What the scripts logged, against the tasks.
fn run_problems(tasks: &[Task], log: &RunLog) -> Vec<String> {
    let mut problems = Vec::new();
    // A task reset by a load runs again, and its attempt number starts
    // over: compare the tasks with what their scripts logged.
    let runs = log.runs();
    let counts = runs.counts();
    let twice: BTreeMap<_, _> = counts.iter().filter(|&(_, &n)| n > 1).collect();
    if !twice.is_empty() {
        problems.push(format!(
            "{} tasks ran more than once, e.g. {:?}",
            twice.len(),
            twice.iter().take(5).collect::<Vec<_>>()
        ));
    }
    if counts.len() != ROWS {
        problems.push(format!("{} of {ROWS} tasks ran", counts.len()));
    }
    let lowered: Vec<String> = tasks
        .iter()
        .filter_map(|task| {
            let highest = runs.of(&task.task_id).iter().map(|r| r.attempt).max()?;
            (task.attempt < highest).then(|| {
                format!(
                    "{} has attempt {} after running attempt {highest}",
                    task.task_id, task.attempt
                )
            })
        })
        .collect();
    if !lowered.is_empty() {
        problems.push(format!(
            "{} tasks have a lower attempt than they ran, e.g. {:?}",
            lowered.len(),
            &lowered[..lowered.len().min(5)]
        ));
    }
    let overlaps = runs.overlaps();
    if !overlaps.is_empty() {
        problems.push(format!(
            "{} overlapping runs of the same task",
            overlaps.len()
        ));
    }
    problems
}
