//! `taskctl cancel`: sets tasks of a step aside so that they do not run,
//! by one guarded write each on the task as read. Pending and waiting
//! tasks are `cancelled` at once; a running one is marked, and its worker
//! stops the script at its next renewal and ends the attempt `cancelled`.
//! What waits for a cancelled task in later steps, and the run a retry
//! rule escalated it to on another step, are cancelled in the same write.
//! The step is read from the state index a page of a shard at a time,
//! never the table: waiting, then pending (where waiting tasks are
//! promoted to), then running; and again, until a round finds nothing
//! left to cancel (a task put back, escalated or promoted meanwhile is
//! met in the next round). A task that changed between its read and its
//! cancel is read again and cancelled as it is now, a few times before it
//! is left alone and reported.

use anyhow::{Result, bail};
use futures::StreamExt as _;
use serde::Serialize;
use taskfleet::model::{StepMeta, Task, TaskState};
use taskfleet::store::{ReplaceOutcome, Store, TaskStore};
use taskfleet::time::Timestamp;

use crate::cli::{CancelArgs, GlobalArgs};
use crate::connect;

/// Tasks read at a time.
const PAGE: usize = 500;

/// Cancels written at once.
const CONCURRENCY: usize = 16;

/// Times a task that changed before its cancel landed is read again.
const REREADS: usize = 3;

/// The order a whole step is read in, each round: a task moving on
/// (waiting to pending to running) is met again further on.
const PASSES: [TaskState; 3] = [TaskState::Waiting, TaskState::Pending, TaskState::Running];

/// Rounds of [`PASSES`] at most; the command stops earlier at a round
/// that cancels nothing (and after one with `--dry-run`).
const ROUNDS: usize = 5;

/// What `cancel --json` prints.
#[derive(Debug, Default, Serialize)]
struct Report {
    step: String,
    dry_run: bool,
    /// Pending or waiting tasks cancelled (or, with --dry-run, that would
    /// be), by state as read.
    cancelled: Vec<(String, TaskState)>,
    /// Running tasks whose workers were asked to stop them.
    asked: Vec<String>,
    /// Left alone: they kept changing each time they were read.
    changed: Vec<String>,
    /// Finished when read (or read again), or running and already asked
    /// to stop by an earlier command.
    not_cancellable: Vec<(String, TaskState)>,
    /// Every task this run has reported, so that one met again in a later
    /// pass or round is not reported twice.
    #[serde(skip)]
    seen: std::collections::HashSet<String>,
}

/// Runs `taskctl cancel`.
pub async fn cancel(global: &GlobalArgs, args: &CancelArgs) -> Result<()> {
    let store = connect::open(global).await?;
    let meta = connect::step(&store, &args.step).await?;
    let mut report = Report {
        step: meta.step.clone(),
        dry_run: args.dry_run,
        ..Report::default()
    };
    let by = crate::retry::who();
    let c = Canceller {
        store: &store,
        meta: &meta,
        by: &by,
        dry_run: args.dry_run,
    };
    if args.tasks.is_empty() {
        for _ in 0..ROUNDS {
            let before_round = report.cancelled.len() + report.asked.len();
            for state in PASSES {
                c.cancel_in_state(state, &mut report).await?;
            }
            if args.dry_run || report.cancelled.len() + report.asked.len() == before_round {
                break;
            }
        }
    } else {
        let mut found = Vec::new();
        for id in &args.tasks {
            let Some(task) = store.task(&meta.step, id).await? else {
                bail!(
                    "step '{}' has no task '{id}'; nothing was cancelled",
                    meta.step
                );
            };
            found.push(task);
        }
        c.cancel_all(found, &mut report).await?;
    }
    if args.json {
        println!("{}", serde_json::to_string_pretty(&report)?);
    } else {
        print_report(&report);
    }
    Ok(())
}

/// One `taskctl cancel` run: where, by whom, and whether for real.
struct Canceller<'a> {
    store: &'a Store,
    meta: &'a StepMeta,
    by: &'a str,
    dry_run: bool,
}

impl Canceller<'_> {
    /// Cancels the step's tasks that the index shows in `state`, a page of
    /// a shard at a time.
    async fn cancel_in_state(&self, state: TaskState, report: &mut Report) -> Result<()> {
        // Far in the future: a running task's index time is its lease.
        let before = Timestamp::from_millis(i64::MAX);
        for shard in 0..self.meta.shards {
            let mut cursor = None;
            loop {
                let (tasks, next) = self
                    .store
                    .in_state(self.meta, shard, state, before, cursor.as_ref(), PAGE)
                    .await?;
                self.cancel_all(tasks, report).await?;
                match next {
                    Some(c) => cursor = Some(c),
                    None => break,
                }
            }
        }
        Ok(())
    }

    /// Cancels `tasks` (as read), a few at a time, into `report`; one that
    /// changed meanwhile is read again and cancelled as it is now, up to
    /// [`REREADS`] times.
    async fn cancel_all(&self, tasks: Vec<Task>, report: &mut Report) -> Result<()> {
        // Met again: with --dry-run, the same task; for real, a running
        // task asked to stop already. Any other was put back to pending or
        // waiting after its cancel, and is cancelled again.
        let mut tasks: Vec<Task> = tasks
            .into_iter()
            .filter(|t| {
                !report.seen.contains(&t.task_id)
                    || !(self.dry_run
                        || (t.state == TaskState::Running && t.cancelled_by.is_some()))
            })
            .collect();
        for round in 0..=REREADS {
            let changed = self.cancel_once(tasks, report).await?;
            if changed.is_empty() {
                break;
            }
            if round == REREADS {
                // A later pass or round may still cancel them.
                for id in changed {
                    if !report.changed.contains(&id) {
                        report.changed.push(id);
                    }
                }
                break;
            }
            tasks = self.read_again(changed).await?;
        }
        Ok(())
    }

    /// The tasks `ids` as stored now, a few reads at a time (one gone
    /// meanwhile, pruned or its step deleted, is left out).
    async fn read_again(&self, ids: Vec<String>) -> Result<Vec<Task>> {
        let step = self.meta.step.as_str();
        let mut reads = futures::stream::iter(ids)
            .map(|id| async move { self.store.task(step, &id).await })
            .buffer_unordered(CONCURRENCY);
        let mut tasks = Vec::new();
        while let Some(read) = reads.next().await {
            tasks.extend(read?);
        }
        Ok(tasks)
    }

    /// One round of [`Canceller::cancel_all`]: the ids of the tasks that
    /// changed.
    async fn cancel_once(&self, tasks: Vec<Task>, report: &mut Report) -> Result<Vec<String>> {
        let now = Timestamp::now();
        let mut todo = Vec::new();
        for task in tasks {
            if taskfleet::transition::cancel(&task, self.by, now).is_none() {
                report.seen.insert(task.task_id.clone());
                report.not_cancellable.push((task.task_id, task.state));
            } else {
                todo.push(task);
            }
        }
        let mut done = futures::stream::iter(todo)
            .map(|task| async move {
                let outcome = if self.dry_run {
                    ReplaceOutcome::Replaced
                } else {
                    self.store.cancel(self.meta, &task, self.by).await?
                };
                Ok::<_, taskfleet::store::StoreError>((task, outcome))
            })
            .buffer_unordered(CONCURRENCY);
        let mut changed = Vec::new();
        while let Some(next) = done.next().await {
            let (task, outcome) = next?;
            if outcome == ReplaceOutcome::Changed {
                changed.push(task.task_id);
                continue;
            }
            report.seen.insert(task.task_id.clone());
            report.changed.retain(|id| *id != task.task_id);
            match task.state {
                TaskState::Running => report.asked.push(task.task_id),
                state => report.cancelled.push((task.task_id, state)),
            }
        }
        Ok(changed)
    }
}

fn print_report(r: &Report) {
    let (verb, ask) = if r.dry_run {
        ("would cancel", "would ask")
    } else {
        ("cancelled", "asked")
    };
    let plural = |n: usize| if n == 1 { "" } else { "s" };
    println!(
        "{verb} {} task{} of step '{}' (pending or waiting)",
        r.cancelled.len(),
        plural(r.cancelled.len()),
        r.step
    );
    if !r.asked.is_empty() {
        println!(
            "{ask} the workers of {} running task{} to stop them; they end cancelled within a third of the lease",
            r.asked.len(),
            plural(r.asked.len())
        );
    }
    if !r.cancelled.is_empty() || !r.asked.is_empty() {
        println!(
            "tasks of later steps that wait for them, and runs a retry rule escalated to another step, are cancelled with them"
        );
    }
    if r.cancelled.len() + r.asked.len() <= 50 {
        for (id, state) in &r.cancelled {
            println!("  {id} (was {state})");
        }
        for id in &r.asked {
            println!("  {id} (running)");
        }
    }
    for id in &r.changed {
        println!("  {id}: left alone, it kept changing; run the command again");
    }
    for (id, state) in &r.not_cancellable {
        println!("  {id}: left alone, it is {state}");
    }
    if r.dry_run {
        println!("--dry-run: nothing changed");
    }
}
