//! The embedded store: the same task contract in one SQLite file, for a
//! laptop with no AWS account and for trying a step on a few samples.
//!
//! Several agent processes on one machine share the file: WAL mode, a busy
//! timeout, and every operation in one `BEGIN IMMEDIATE` transaction, so a
//! claim or a fenced write reads, checks and writes atomically. The whole
//! task is stored as JSON; the columns the conditions and the state index
//! need (state, ready/lease time, attempt, owner) sit beside it and are
//! written in the same statement.
//!
//! Counts come from the state index (`GROUP BY state`): one query per
//! step, local, no counters to keep in step.

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use rusqlite::{Connection, OpenFlags, TransactionBehavior, params};

use super::{
    Candidate, Claim, Correction, Fence, Finish, InsertOutcome, Order, ReplaceOutcome,
    SettingsChange, StepChange, StoreError, TaskStore,
};
use crate::model::{FailedTask, StepMeta, StepStatus, Task, TaskState};
use crate::time::Timestamp;
use crate::transition;

mod browse;
mod counts;
mod deps;
mod lease;
mod prune;
mod rows;

use rows::{apply, from_json, q, read_step, read_task, to_json};

const SCHEMA: &str = "
CREATE TABLE IF NOT EXISTS steps (
    step TEXT PRIMARY KEY,
    meta TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS tasks (
    step     TEXT NOT NULL,
    task_id  TEXT NOT NULL,
    state    TEXT NOT NULL,
    state_at INTEGER NOT NULL,
    attempt  INTEGER NOT NULL,
    owner    TEXT,
    shard    INTEGER NOT NULL,
    body     TEXT NOT NULL,
    PRIMARY KEY (step, task_id)
) WITHOUT ROWID;
CREATE INDEX IF NOT EXISTS tasks_by_state ON tasks (step, state, shard, state_at);
CREATE TABLE IF NOT EXISTS loads (
    step   TEXT NOT NULL,
    at     INTEGER NOT NULL,
    record TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS loads_by_step ON loads (step, at);
CREATE INDEX IF NOT EXISTS tasks_by_expiry ON tasks (json_extract(body, '$.expires_at'))
    WHERE json_extract(body, '$.expires_at') IS NOT NULL;
";

/// Deletes the tasks that have expired (`load --expire-after`), as the
/// table's TTL does on DynamoDB: counts here are of the tasks, so they
/// leave every count with them. Run before anything reads counts or
/// tasks for a person; an index makes it one probe when nothing expired.
fn purge_expired(conn: &Connection) -> rusqlite::Result<()> {
    let now_secs = Timestamp::now().as_millis().div_euclid(1000);
    conn.prepare_cached("DELETE FROM tasks WHERE json_extract(body, '$.expires_at') <= ?1")?
        .execute(params![now_secs])?;
    Ok(())
}

/// How long a writer waits for another process's transaction.
const BUSY_TIMEOUT: Duration = Duration::from_secs(30);

/// Tasks in one SQLite file.
#[derive(Debug, Clone)]
pub struct SqliteStore {
    path: PathBuf,
    conn: Arc<Mutex<Connection>>,
}

impl SqliteStore {
    /// Creates the file (and its directory) and the schema if needed.
    /// Returns whether it was created.
    pub fn init(path: &Path) -> Result<(Self, bool), StoreError> {
        let existed = path.exists();
        if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
            std::fs::create_dir_all(dir).map_err(|e| io_error(path, &e))?;
        }
        let conn = Connection::open(path).map_err(|e| sql_error(path, &e))?;
        configure(&conn, path)?;
        conn.execute_batch(SCHEMA)
            .map_err(|e| sql_error(path, &e))?;
        Ok((Self::from_conn(path, conn), !existed))
    }

    /// Opens an existing store; a missing file says to run `init`.
    pub fn open(path: &Path) -> Result<Self, StoreError> {
        if !path.exists() {
            return Err(StoreError::NoEmbeddedStore {
                path: path.display().to_string(),
            });
        }
        let conn = Connection::open_with_flags(
            path,
            OpenFlags::SQLITE_OPEN_READ_WRITE | OpenFlags::SQLITE_OPEN_NO_MUTEX,
        )
        .map_err(|e| sql_error(path, &e))?;
        configure(&conn, path)?;
        let has_tables: i64 = conn
            .query_row(
                "SELECT count(*) FROM sqlite_master WHERE type = 'table' AND name IN ('steps', 'tasks')",
                [],
                |r| r.get(0),
            )
            .map_err(|e| sql_error(path, &e))?;
        if has_tables != 2 {
            return Err(StoreError::SchemaMismatch {
                table: path.display().to_string(),
                differences: vec!["it is not a task store (no steps and tasks tables)".into()],
            });
        }
        // A store made before load records were kept gets their table.
        conn.execute_batch(SCHEMA)
            .map_err(|e| sql_error(path, &e))?;
        // So that a load finds an expired task gone, as reads do.
        purge_expired(&conn).map_err(|e| sql_error(path, &e))?;
        Ok(Self::from_conn(path, conn))
    }

    fn from_conn(path: &Path, conn: Connection) -> Self {
        Self {
            path: path.to_owned(),
            conn: Arc::new(Mutex::new(conn)),
        }
    }

    /// The file.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Runs `f` in one immediate transaction on a blocking thread.
    async fn tx<T, F>(&self, f: F) -> Result<T, StoreError>
    where
        T: Send + 'static,
        F: FnOnce(&rusqlite::Transaction<'_>) -> Result<T, StoreError> + Send + 'static,
    {
        let conn = self.conn.clone();
        let path = self.path.clone();
        tokio::task::spawn_blocking(move || {
            let mut conn = conn
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner);
            let tx = conn
                .transaction_with_behavior(TransactionBehavior::Immediate)
                .map_err(|e| sql_error(&path, &e))?;
            let out = f(&tx)?;
            tx.commit().map_err(|e| sql_error(&path, &e))?;
            Ok(out)
        })
        .await
        .map_err(|e| StoreError::Service {
            operation: "SQLite",
            message: format!("worker thread failed: {e}"),
        })?
    }
}

fn configure(conn: &Connection, path: &Path) -> Result<(), StoreError> {
    conn.busy_timeout(BUSY_TIMEOUT)
        .map_err(|e| sql_error(path, &e))?;
    conn.pragma_update(None, "journal_mode", "WAL")
        .map_err(|e| sql_error(path, &e))?;
    conn.pragma_update(None, "synchronous", "NORMAL")
        .map_err(|e| sql_error(path, &e))?;
    Ok(())
}

fn sql_error(path: &Path, e: &rusqlite::Error) -> StoreError {
    StoreError::Service {
        operation: "SQLite",
        message: format!("{}: {e}", path.display()),
    }
}

fn io_error(path: &Path, e: &std::io::Error) -> StoreError {
    StoreError::Service {
        operation: "SQLite",
        message: format!("cannot create {}: {e}", path.display()),
    }
}

impl TaskStore for SqliteStore {
    fn describe(&self) -> String {
        format!("the embedded store {}", self.path.display())
    }

    async fn ensure_step(
        &self,
        step: &str,
        change: &SettingsChange,
    ) -> Result<(StepMeta, StepChange), StoreError> {
        let (step, change) = (step.to_owned(), change.clone());
        self.tx(move |tx| {
            if let Some(meta) = read_step(tx, &step)? {
                let Some(updated) = change.update_step(&meta)? else {
                    return Ok((meta, StepChange::Unchanged));
                };
                tx.execute(
                    "UPDATE steps SET meta = ?2 WHERE step = ?1",
                    params![step, to_json(&updated)],
                )
                .map_err(q)?;
                return Ok((updated, StepChange::Updated));
            }
            let meta = change.new_step(&step);
            tx.execute(
                "INSERT INTO steps (step, meta) VALUES (?1, ?2)",
                params![step, to_json(&meta)],
            )
            .map_err(q)?;
            Ok((meta, StepChange::Created))
        })
        .await
    }

    async fn insert(&self, meta: &StepMeta, tasks: &[Task]) -> Result<InsertOutcome, StoreError> {
        let (tasks, meta) = (tasks.to_vec(), meta.clone());
        self.tx(move |tx| {
            let mut out = InsertOutcome::default();
            for task in &tasks {
                if apply(tx, &meta, &task.task_id, &transition::insert(task))?.is_some() {
                    out.inserted += 1;
                } else if let Some(old) = read_task(tx, &meta.step, &task.task_id)? {
                    out.existing.push(old);
                }
            }
            Ok(out)
        })
        .await
    }

    async fn insert_after(
        &self,
        meta: &StepMeta,
        tasks: &[Task],
        after: &[String],
    ) -> Result<InsertOutcome, StoreError> {
        let (tasks, meta, after) = (tasks.to_vec(), meta.clone(), after.to_vec());
        self.tx(move |tx| deps::insert_after_in(tx, &meta, &tasks, &after))
            .await
    }

    async fn replace(
        &self,
        meta: &StepMeta,
        old: &Task,
        new: &Task,
    ) -> Result<ReplaceOutcome, StoreError> {
        let (meta, old, new) = (meta.clone(), old.clone(), new.clone());
        self.tx(move |tx| {
            let make = |t: &Task| transition::replace(t, &new, Timestamp::now());
            Ok(match deps::end_in(tx, &meta, &old, &make)? {
                Some(_) => ReplaceOutcome::Replaced,
                None => ReplaceOutcome::Changed,
            })
        })
        .await
    }

    async fn retry(
        &self,
        meta: &StepMeta,
        task_id: &str,
        attempt: u32,
        by: &str,
    ) -> Result<ReplaceOutcome, StoreError> {
        let (meta, id, by) = (meta.clone(), task_id.to_owned(), by.to_owned());
        self.tx(move |tx| {
            let Some(old) = read_task(tx, &meta.step, &id)? else {
                return Ok(ReplaceOutcome::Changed);
            };
            let make = |t: &Task| transition::retry(t, attempt, &by, Timestamp::now());
            Ok(match deps::end_in(tx, &meta, &old, &make)? {
                Some(_) => ReplaceOutcome::Replaced,
                None => ReplaceOutcome::Changed,
            })
        })
        .await
    }

    async fn recount(&self, _meta: &StepMeta, _apply: bool) -> Result<Vec<Correction>, StoreError> {
        // Counts here are computed from the tasks on every status: there is
        // nothing stored that could drift.
        Ok(Vec::new())
    }

    async fn status(&self, step: Option<&str>) -> Result<Vec<StepStatus>, StoreError> {
        let wanted = step.map(str::to_owned);
        let path = self.path.display().to_string();
        self.tx(move |tx| {
            purge_expired(tx).map_err(q)?;
            counts::status_in(tx, wanted.as_deref(), &path)
        })
        .await
    }

    async fn open_per_shard(&self, meta: &StepMeta) -> Result<Vec<u64>, StoreError> {
        let meta = meta.clone();
        self.tx(move |tx| counts::open_in(tx, &meta)).await
    }

    async fn failed(
        &self,
        step: Option<&str>,
        limit: usize,
    ) -> Result<Vec<FailedTask>, StoreError> {
        let steps: Vec<String> = self
            .status(step)
            .await?
            .into_iter()
            .map(|s| s.step)
            .collect();
        self.tx(move |tx| counts::failed_in(tx, &steps, limit))
            .await
    }

    async fn task(&self, step: &str, task_id: &str) -> Result<Option<Task>, StoreError> {
        let (step, id, path) = (
            step.to_owned(),
            task_id.to_owned(),
            self.path.display().to_string(),
        );
        self.tx(move |tx| {
            if read_step(tx, &step)?.is_none() {
                return Err(StoreError::StepNotFound { step, table: path });
            }
            purge_expired(tx).map_err(q)?;
            read_task(tx, &step, &id)
        })
        .await
    }

    async fn step(&self, step: &str) -> Result<Option<StepMeta>, StoreError> {
        let step = step.to_owned();
        self.tx(move |tx| read_step(tx, &step)).await
    }

    async fn record_load(
        &self,
        step: &str,
        record: &crate::model::LoadRecord,
    ) -> Result<(), StoreError> {
        let (step, record) = (step.to_owned(), record.clone());
        self.tx(move |tx| browse::record_load(tx, &step, &record))
            .await
    }

    async fn loads(
        &self,
        step: &str,
        limit: usize,
    ) -> Result<Vec<crate::model::LoadRecord>, StoreError> {
        let step = step.to_owned();
        self.tx(move |tx| browse::loads(tx, &step, limit)).await
    }

    async fn find(&self, task_id: &str) -> Result<Vec<crate::model::TaskSummary>, StoreError> {
        let id = task_id.to_owned();
        self.tx(move |tx| {
            purge_expired(tx).map_err(q)?;
            browse::find(tx, &id)
        })
        .await
    }

    async fn shard_page(
        &self,
        meta: &StepMeta,
        shard: u16,
        after: Option<&str>,
        limit: usize,
    ) -> Result<crate::model::TaskPage, StoreError> {
        let (step, after) = (meta.step.clone(), after.map(str::to_owned));
        self.tx(move |tx| {
            purge_expired(tx).map_err(q)?;
            browse::shard_page(tx, &step, shard, after.as_deref(), limit)
        })
        .await
    }

    async fn in_state(
        &self,
        meta: &StepMeta,
        shard: u16,
        state: TaskState,
        before: Timestamp,
        after: Option<&super::PruneCursor>,
        limit: usize,
    ) -> Result<(Vec<Task>, Option<super::PruneCursor>), StoreError> {
        let (step, after) = (meta.step.clone(), after.cloned());
        self.tx(move |tx| prune::in_state(tx, &step, shard, state, before, after.as_ref(), limit))
            .await
    }

    async fn steps(&self) -> Result<Vec<StepMeta>, StoreError> {
        let path = self.path.display().to_string();
        self.tx(move |tx| counts::read_steps(tx, None, &path)).await
    }

    async fn remove_step(&self, meta: &StepMeta) -> Result<(), StoreError> {
        let step = meta.step.clone();
        self.tx(move |tx| prune::remove_step_in(tx, &step)).await
    }

    async fn cancel(
        &self,
        meta: &StepMeta,
        task: &Task,
        by: &str,
    ) -> Result<ReplaceOutcome, StoreError> {
        let (meta, task, by) = (meta.clone(), task.clone(), by.to_owned());
        self.tx(move |tx| {
            let now = Timestamp::now();
            if transition::cancel(&task, &by, now).is_none() {
                return Ok(ReplaceOutcome::Changed);
            }
            let make = |t: &Task| transition::cancel(t, &by, now).expect("cancellable as read");
            Ok(match deps::end_in(tx, &meta, &task, &make)? {
                Some(_) => ReplaceOutcome::Replaced,
                None => ReplaceOutcome::Changed,
            })
        })
        .await
    }

    async fn prune(&self, meta: &StepMeta, tasks: &[Task]) -> Result<usize, StoreError> {
        let (meta, tasks) = (meta.clone(), tasks.to_vec());
        self.tx(move |tx| prune::prune_in(tx, &meta, &tasks)).await
    }

    async fn running(&self, meta: &StepMeta) -> Result<Vec<super::RunningTask>, StoreError> {
        let step = meta.step.clone();
        self.tx(move |tx| {
            let mut stmt = tx
                .prepare_cached(
                    "SELECT task_id, owner, state_at FROM tasks WHERE step = ?1 AND state = 'running'",
                )
                .map_err(q)?;
            let rows = stmt
                .query_map([&step], |r| {
                    // A running task's index time is its lease expiry.
                    Ok(super::RunningTask {
                        task_id: r.get(0)?,
                        owner: r.get::<_, Option<String>>(1)?.unwrap_or_default(),
                        lease_expires_at: Timestamp::from_millis(r.get(2)?),
                    })
                })
                .map_err(q)?;
            rows.collect::<Result<Vec<_>, _>>().map_err(q)
        })
        .await
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
        self.candidates_in(meta, shard, state, now, limit, order)
            .await
    }

    async fn claim(
        &self,
        meta: &StepMeta,
        candidate: &Candidate,
        owner: &str,
        now: Timestamp,
    ) -> Result<Claim, StoreError> {
        self.claim_task(meta, candidate, owner, now).await
    }

    async fn reclaim(
        &self,
        meta: &StepMeta,
        old: &Task,
        owner: &str,
        now: Timestamp,
    ) -> Result<Claim, StoreError> {
        self.reclaim_task(meta, old, owner, now).await
    }

    async fn heartbeat(
        &self,
        meta: &StepMeta,
        task: &Task,
        until: Timestamp,
    ) -> Result<Fence, StoreError> {
        self.heartbeat_task(meta, task, until).await
    }

    async fn finish(
        &self,
        meta: &StepMeta,
        task: &Task,
        finish: &Finish,
    ) -> Result<Fence, StoreError> {
        self.finish_task(meta, task, finish).await
    }
}
