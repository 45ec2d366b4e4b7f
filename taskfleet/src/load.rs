//! Loading a sample sheet into a step.
//!
//! [`prepare`] validates everything (step name, script, sheet, item sizes,
//! the kernel's limits on a script's environment) before anything is
//! written; [`load`] then inserts the tasks in batches of
//! one shard each, several in flight, shards taken in turn so that batches
//! in flight update different counter items. An insert never overwrites a
//! task that exists, and counts what it writes in the same atomic write:
//! two loads of the same sheet at once, or a load killed and run again,
//! leave every task once and `loaded` exact. Existing tasks keep their
//! state, attempts and history unless `replace` is asked for, and even
//! then a running task is never touched and the attempt number stays.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use futures::{StreamExt, TryStreamExt};
use sha2::{Digest, Sha256};

use crate::envrules::{self, SizeProblem};
use crate::model::{NewTask, StepMeta, Task, TaskState};
use crate::schema::{self, MAX_ITEM_BYTES, RUNTIME_RESERVE_BYTES};
use crate::sheet::{Sheet, SheetError};
use crate::store::dynamo::task_item;
use crate::store::{
    ReplaceOutcome, SettingsChange, StepChange, StoreError, TaskStore, new_pending_task,
};
use crate::time::Timestamp;

/// Tasks a batch holds: one transaction, with its counter update.
pub const BATCH: usize = schema::MAX_TRANSACTION_ITEMS - 1;

/// Why a load did not happen.
#[derive(Debug, thiserror::Error)]
pub enum LoadError {
    /// The sheet is not valid.
    #[error(transparent)]
    Sheet(#[from] SheetError),
    /// The step name, the script or a setting is not valid.
    #[error("{0}")]
    Input(String),
    /// The store failed.
    #[error(transparent)]
    Store(#[from] StoreError),
}

/// What to load.
#[derive(Debug, Clone)]
pub struct LoadRequest {
    /// The step the tasks go to.
    pub step: String,
    /// The script every task of this load runs.
    pub script: String,
    /// Step settings to store.
    pub settings: SettingsChange,
    /// Reset existing tasks that are not running.
    pub replace: bool,
    /// Batches in flight at once.
    pub concurrency: usize,
}

/// A load that passed validation.
#[derive(Debug, Clone)]
pub struct PreparedLoad {
    request: LoadRequest,
    digest: String,
    sheet: Sheet,
}

impl PreparedLoad {
    /// Number of tasks in the sheet.
    pub fn len(&self) -> usize {
        self.sheet.tasks.len()
    }

    /// Whether the sheet has no tasks (never true after validation).
    pub fn is_empty(&self) -> bool {
        self.sheet.tasks.is_empty()
    }
}

/// What a load did.
#[derive(Debug, Clone, Default, PartialEq, serde::Serialize)]
pub struct LoadReport {
    /// The step.
    pub step: String,
    /// Rows in the sheet.
    pub rows: usize,
    /// SHA-256 of the sheet, hex.
    pub sheet_sha256: String,
    /// New tasks written.
    pub loaded: usize,
    /// Rows whose task existed and was left alone.
    pub skipped_existing: usize,
    /// Existing tasks reset to pending (`replace`).
    pub replaced: usize,
    /// Existing tasks left alone because they were running (`replace`).
    pub skipped_running: usize,
    /// Whether the step was created by this load.
    pub step_created: bool,
    /// Whether this load changed the step's settings.
    pub settings_changed: bool,
    /// Wall-clock seconds.
    pub seconds: f64,
}

/// Validates a load completely. Nothing is written.
pub fn prepare(request: LoadRequest, sheet: Sheet) -> Result<PreparedLoad, LoadError> {
    if !schema::is_valid_step_name(&request.step) {
        return Err(LoadError::Input(format!(
            "'{}' is not a valid step name: use a letter, then letters, digits, '-' or '_' (at most 64)",
            request.step
        )));
    }
    if request.script.trim().is_empty() {
        return Err(LoadError::Input(
            "the script is empty; give --script FILE or --command TEXT".into(),
        ));
    }
    if let Some(0) = request.settings.max_attempts {
        return Err(LoadError::Input("--max-attempts must be at least 1".into()));
    }
    if let Some(shards) = request.settings.shards
        && !(1..=schema::MAX_SHARDS).contains(&shards)
    {
        return Err(LoadError::Input(format!(
            "--shards must be between 1 and {}",
            schema::MAX_SHARDS
        )));
    }
    if let Some(lease) = request.settings.lease
        && lease < Duration::from_secs(3)
    {
        return Err(LoadError::Input("--lease must be at least 3s".into()));
    }
    for row in &sheet.tasks {
        check_env_size(&sheet, row)?;
    }
    let digest = hex(&Sha256::digest(request.script.as_bytes()));
    // Measure each task as it will be stored, with room for what attempts
    // add later, so that no write fails half-way through on item size.
    let meta = request.settings.new_step(&request.step);
    let budget = MAX_ITEM_BYTES - RUNTIME_RESERVE_BYTES;
    let origins = sheet.origins();
    for row in &sheet.tasks {
        let mut task = new_pending_task(
            &request.step,
            &request.script,
            &digest,
            row,
            Timestamp::now(),
        );
        task.columns.clone_from(&origins);
        let size = schema::item_size(&task_item(
            &meta,
            &task,
            crate::transition::insert(&task).state_at,
        ));
        if size > budget {
            return Err(SheetError {
                path: sheet.path.clone(),
                line: Some(row.line),
                column: None,
                message: format!(
                    "task '{}' would take {} KB; a task may take at most {} KB at load time \
                     (DynamoDB's 400 KB item limit, less {} KB kept for attempt history); \
                     shorten the script or the row",
                    row.task_id,
                    size.div_ceil(1024),
                    budget / 1024,
                    RUNTIME_RESERVE_BYTES / 1024
                ),
            }
            .into());
        }
    }
    Ok(PreparedLoad {
        request,
        digest,
        sheet,
    })
}

/// Refuses a row whose script the kernel would never start: `execve`
/// fails with E2BIG on a `NAME=value` string over 128 KiB, or on an
/// environment over its total limit ([`envrules`]).
fn check_env_size(sheet: &Sheet, row: &NewTask) -> Result<(), SheetError> {
    let Some(problem) = envrules::size_problem(&row.env) else {
        return Ok(());
    };
    let (column, message) = match problem {
        SizeProblem::String { name, bytes } => (
            sheet
                .env_names
                .iter()
                .position(|n| *n == name)
                .map(|i| sheet.columns[i].clone()),
            format!(
                "task '{}': {name}=... takes {bytes} bytes as an environment string; the kernel \
                 allows at most {} (name, '=', value and a NUL), so the script could never \
                 start; put large data in a file and its path in the sheet",
                row.task_id,
                envrules::MAX_ENV_STRING_BYTES
            ),
        ),
        SizeProblem::Row { bytes } => (
            None,
            format!(
                "task '{}': the row takes {bytes} bytes as environment strings (each NAME=value, \
                 its NUL and its {}-byte pointer); at most {} are allowed, half of what Linux \
                 usually allows a program's whole environment, so that the script can always \
                 start; put large data in files and their paths in the sheet",
                row.task_id,
                envrules::ENV_POINTER_BYTES,
                envrules::MAX_ROW_ENV_BYTES
            ),
        ),
    };
    Err(SheetError {
        path: sheet.path.clone(),
        line: Some(row.line),
        column,
        message,
    })
}

/// Writes a prepared load. `progress` is called with the number of rows
/// handled so far.
pub async fn load<S: TaskStore>(
    store: &S,
    prepared: &PreparedLoad,
    progress: &(dyn Fn(usize) + Sync),
) -> Result<LoadReport, LoadError> {
    let started = Instant::now();
    let request = &prepared.request;
    let (meta, change) = store.ensure_step(&request.step, &request.settings).await?;
    let now = Timestamp::now();

    // Group rows by shard, then cut each shard's rows into batches, so that
    // every batch updates one counter item.
    let mut by_shard: BTreeMap<u16, Vec<Task>> = BTreeMap::new();
    let origins = prepared.sheet.origins();
    for row in &prepared.sheet.tasks {
        let mut task = new_pending_task(&request.step, &request.script, &prepared.digest, row, now);
        task.columns.clone_from(&origins);
        by_shard
            .entry(schema::shard_of(&task.task_id, meta.shards))
            .or_default()
            .push(task);
    }
    // Shards in turn: batches in flight touch different counter items, so
    // their transactions do not conflict with each other.
    let mut per_shard: Vec<std::slice::Chunks<'_, Task>> =
        by_shard.values().map(|tasks| tasks.chunks(BATCH)).collect();
    let mut batches: Vec<&[Task]> = Vec::new();
    loop {
        let before = batches.len();
        batches.extend(per_shard.iter_mut().filter_map(Iterator::next));
        if batches.len() == before {
            break;
        }
    }

    let done = std::sync::atomic::AtomicUsize::new(0);
    let outcomes: Vec<BatchOutcome> = futures::stream::iter(batches)
        .map(|batch| {
            let meta = &meta;
            let done = &done;
            async move {
                let outcome = write_batch(store, meta, batch, request.replace).await?;
                let n =
                    done.fetch_add(batch.len(), std::sync::atomic::Ordering::Relaxed) + batch.len();
                progress(n);
                Ok::<_, StoreError>(outcome)
            }
        })
        .buffer_unordered(request.concurrency.max(1))
        .try_collect()
        .await?;

    let mut report = LoadReport {
        step: request.step.clone(),
        rows: prepared.sheet.tasks.len(),
        sheet_sha256: prepared.sheet.sha256.clone(),
        step_created: change == StepChange::Created,
        settings_changed: change == StepChange::Updated,
        ..LoadReport::default()
    };
    for o in outcomes {
        report.loaded += o.loaded;
        report.skipped_existing += o.skipped_existing;
        report.replaced += o.replaced;
        report.skipped_running += o.skipped_running;
    }
    report.seconds = started.elapsed().as_secs_f64();
    Ok(report)
}

#[derive(Debug, Default)]
struct BatchOutcome {
    loaded: usize,
    skipped_existing: usize,
    replaced: usize,
    skipped_running: usize,
}

async fn write_batch<S: TaskStore>(
    store: &S,
    meta: &StepMeta,
    batch: &[Task],
    replace: bool,
) -> Result<BatchOutcome, StoreError> {
    let inserted = store.insert(meta, batch).await?;
    let mut outcome = BatchOutcome {
        loaded: inserted.inserted,
        ..BatchOutcome::default()
    };
    for old in inserted.existing {
        if !replace {
            outcome.skipped_existing += 1;
        } else if old.state == TaskState::Running {
            outcome.skipped_running += 1;
        } else {
            let new = batch
                .iter()
                .find(|t| t.task_id == old.task_id)
                .expect("existing tasks come from the batch");
            match store.replace(meta, &old, new).await? {
                ReplaceOutcome::Replaced => outcome.replaced += 1,
                // Claimed (or otherwise changed) since we looked: leave it.
                ReplaceOutcome::Changed => outcome.skipped_running += 1,
            }
        }
    }
    Ok(outcome)
}

fn hex(bytes: &[u8]) -> String {
    use std::fmt::Write;
    bytes
        .iter()
        .fold(String::with_capacity(bytes.len() * 2), |mut s, b| {
            let _ = write!(s, "{b:02x}");
            s
        })
}

#[cfg(test)]
mod tests {
    use std::path::Path;

    use super::*;
    use crate::sheet::SheetOptions;

    fn prepare_sheet(text: &str) -> Result<PreparedLoad, LoadError> {
        let sheet = Sheet::parse(
            Path::new("s.csv"),
            text.as_bytes(),
            &SheetOptions::default(),
        )
        .unwrap();
        let request = LoadRequest {
            step: "qc".into(),
            script: "true".into(),
            settings: SettingsChange::default(),
            replace: false,
            concurrency: 1,
        };
        prepare(request, sheet)
    }

    #[test]
    fn a_value_the_kernel_would_refuse_as_environment_is_refused_with_task_column_and_sizes() {
        let at_limit = "v".repeat(envrules::MAX_ENV_STRING_BYTES - "NOTES=".len() - 1);
        assert!(prepare_sheet(&format!("sample,notes\nA,{at_limit}\n")).is_ok());
        let err = prepare_sheet(&format!("sample,notes\nA,x\nB,{at_limit}v\n"))
            .unwrap_err()
            .to_string();
        assert!(
            err.starts_with(
                "s.csv:3: column 'notes': task 'B': NOTES=... takes 131073 bytes as an \
                 environment string; the kernel allows at most 131072"
            ),
            "{err}"
        );
    }

    #[test]
    fn a_row_over_the_environment_budget_is_refused() {
        let value = "v".repeat(100_000);
        let header: Vec<String> = (0..11).map(|i| format!("c{i:02}")).collect();
        let row: Vec<&str> = (0..11).map(|_| value.as_str()).collect();
        let text = format!("sample,{}\nA,{}\n", header.join(","), row.join(","));
        let err = prepare_sheet(&text).unwrap_err().to_string();
        assert!(
            err.starts_with("s.csv:2: task 'A': the row takes 1100160 bytes as environment"),
            "{err}"
        );
        assert!(err.contains("at most 1048576 are allowed"), "{err}");
    }
}
