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

use std::time::{Duration, Instant};

use futures::StreamExt;
use sha2::{Digest, Sha256};

use crate::envrules::{self, SizeProblem};
use crate::model::{LoadLock, NewTask, StepMeta};
use crate::schema::{self, MAX_ITEM_BYTES, RUNTIME_RESERVE_BYTES};
use crate::sheet::{Sheet, SheetError};
use crate::store::dynamo::task_item;
use crate::store::{SettingsChange, StepChange, StoreError, TaskStore, new_pending_task};
use crate::time::Timestamp;

use batch::{BatchOutcome, Batcher, count_first, write};

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

impl LoadRequest {
    /// The steps this load's tasks wait for: the ones asked for, else the
    /// step's stored ones.
    fn after<'a>(&'a self, meta: &'a StepMeta) -> &'a [String] {
        match &self.settings.after {
            Some(after) => after,
            None => &meta.after,
        }
    }
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
        self.sheet.rows
    }

    /// Whether the sheet has no tasks (never true after validation).
    pub fn is_empty(&self) -> bool {
        self.sheet.rows == 0
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
    /// SHA-256 of the script, hex (every task records it too).
    pub script_sha256: String,
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

/// Refuses `--after` that names too many steps, a step by a name no step
/// can have, or the step itself.
fn refuse_after_names(request: &LoadRequest) -> Result<(), LoadError> {
    let after = request.settings.after.as_deref().unwrap_or_default();
    if after.len() > crate::transition::deps::MAX_AFTER {
        return Err(LoadError::Input(format!(
            "--after names {} steps; a step can wait for at most {}: load a step that waits for some of them, and this one after it",
            after.len(),
            crate::transition::deps::MAX_AFTER
        )));
    }
    for up in request.settings.after.iter().flatten() {
        if !schema::is_valid_step_name(up) {
            return Err(LoadError::Input(format!(
                "--after '{up}' is not a valid step name: use a letter, then letters, digits, '-' or '_' (at most 64)"
            )));
        }
        if *up == request.step {
            return Err(LoadError::Input(format!(
                "--after {up}: a step cannot wait for itself; name the step whose tasks must be done first"
            )));
        }
    }
    Ok(())
}

/// Validates a load completely. Nothing is written.
pub fn prepare(mut request: LoadRequest, sheet: Sheet) -> Result<PreparedLoad, LoadError> {
    // Each upstream step once, in one order.
    if let Some(after) = request.settings.after.as_mut() {
        after.sort();
        after.dedup();
    }
    if !schema::is_valid_step_name(&request.step) {
        return Err(LoadError::Input(format!(
            "'{}' is not a valid step name: use a letter, then letters, digits, '-' or '_' (at most 64)",
            request.step
        )));
    }
    refuse_after_names(&request)?;
    for to in crate::rules::escalation_steps(request.settings.rules.as_deref().unwrap_or(&[])) {
        if !schema::is_valid_step_name(&to) {
            return Err(LoadError::Input(format!(
                "escalate-to '{to}' is not a valid step name: use a letter, then letters, digits, '-' or '_' (at most 64)"
            )));
        }
        if to == request.step {
            return Err(LoadError::Input(format!(
                "escalate-to {to}: a step cannot escalate to itself; name the step whose launch template has the bigger instance type"
            )));
        }
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
    let digest = hex(&Sha256::digest(request.script.as_bytes()));
    // Measure each task as it will be stored, with room for what attempts
    // add later, so that no write fails half-way through on item size.
    let meta = request.settings.new_step(&request.step);
    let budget = MAX_ITEM_BYTES - RUNTIME_RESERVE_BYTES;
    let origins = sheet.origins();
    let now = Timestamp::now();
    let mut check = |sheet: &Sheet, row: &NewTask| -> Result<(), SheetError> {
        check_env_size(sheet, row)?;
        let mut task = new_pending_task(&request.step, &request.script, &digest, row, now);
        task.columns.clone_from(&origins);
        let size = schema::item_size(&task_item(
            &meta,
            &task,
            crate::transition::load_place(&task),
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
            });
        }
        Ok(())
    };
    let sheet = sheet.validate(&mut check)?;
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
    // The load's state (batches in flight, per-shard buffers) lives on the
    // heap, not in the caller's future.
    Box::pin(load_rows(store, prepared, progress)).await
}

/// The steps waited for must exist, and not wait for this one: nothing is
/// written otherwise.
async fn check_after<S: TaskStore>(store: &S, request: &LoadRequest) -> Result<(), LoadError> {
    let after = || request.settings.after.iter().flatten();
    for up in after() {
        if store.step(up).await?.is_none() {
            return Err(LoadError::Input(format!(
                "--after {up}: there is no step '{up}' in {}; load it first (its tasks must exist for these to wait for them)",
                store.describe()
            )));
        }
    }
    refuse_a_cycle(store, &request.step, after()).await
}

/// Refuses `--after` steps that wait, through the steps they wait for,
/// for `step` itself: its tasks and theirs would wait for each other for
/// ever. One step read per step on the way, each at most once.
async fn refuse_a_cycle<S: TaskStore>(
    store: &S,
    step: &str,
    after: impl Iterator<Item = &String>,
) -> Result<(), LoadError> {
    // Each step to visit, with the way to it from `step`.
    let mut todo: Vec<Vec<String>> = after.map(|up| vec![up.clone()]).collect();
    let mut seen = std::collections::HashSet::new();
    while let Some(way) = todo.pop() {
        let last = way.last().expect("a way has a step");
        if !seen.insert(last.clone()) {
            continue;
        }
        let Some(meta) = store.step(last).await? else {
            continue;
        };
        for up in &meta.after {
            if up == step {
                let mut chain = way.iter().map(String::as_str).collect::<Vec<_>>();
                chain.push(step);
                return Err(LoadError::Input(format!(
                    "--after {}: {} waits for {}; the tasks of these steps would wait for each other for ever. Load {step} without --after {} (or as a step of another name)",
                    way[0],
                    chain[0],
                    chain[1..].join(", which waits for "),
                    way[0],
                )));
            }
            let mut longer = way.clone();
            longer.push(up.clone());
            todo.push(longer);
        }
    }
    Ok(())
}

async fn load_rows<S: TaskStore>(
    store: &S,
    prepared: &PreparedLoad,
    progress: &(dyn Fn(usize) + Sync),
) -> Result<LoadReport, LoadError> {
    let started = Instant::now();
    let request = &prepared.request;
    let mut lock = LoadLock::new(Timestamp::now().plus(LOCK_LEASE));
    check_after(store, request).await?;
    let (meta, change) = ensure_step(store, request, &lock).await?;
    ensure_escalation_steps(store, &meta).await?;
    let after = request.after(&meta).to_vec();
    // The first load of a new step, under its lock, writes without
    // per-task conditions and counts behind its writes.
    let first = meta.first_load.as_ref() == Some(&lock);
    let mut uncounted: Vec<Vec<(&'static str, i64)>> = vec![Vec::new(); usize::from(meta.shards)];
    let mut counted_at = Instant::now();
    let now = Timestamp::now();
    let origins = prepared.sheet.origins();
    let make = |row: &NewTask| {
        let mut task = new_pending_task(&request.step, &request.script, &prepared.digest, row, now);
        task.columns.clone_from(&origins);
        task
    };
    let mut batches = Batcher::new(meta.shards);
    let mut rows = prepared.sheet.rows()?;
    let mut rows_done = false;
    let concurrency = request.concurrency.max(1);
    let mut in_flight = futures::stream::FuturesUnordered::new();
    let mut handled = 0;
    let mut totals = BatchOutcome::default();
    loop {
        // Read rows until a batch is ready for a shard with nothing in
        // flight: batches in flight update different counter items, so
        // their transactions do not conflict with each other.
        while !rows_done
            && in_flight.len() < concurrency
            && !batches.startable()
            && batches.ready.len() < 2 * concurrency
        {
            if let Some(row) = rows.next() {
                batches.push(make(&row?), &meta);
            } else {
                rows_done = true;
                batches.flush_all();
            }
        }
        while in_flight.len() < concurrency {
            let Some((shard, batch)) = batches.start() else {
                break;
            };
            let (meta, lock, after) = (&meta, lock.clone(), &after);
            in_flight.push(async move {
                let outcome = write(
                    store,
                    meta,
                    first.then_some(&lock),
                    &batch,
                    request.replace,
                    after,
                )
                .await;
                (shard, batch.len(), outcome)
            });
        }
        // A first load counts and renews its lock every second, whether or
        // not batches finish (a throttled table slows them down).
        let next = if first {
            let tick = COUNT_EVERY.saturating_sub(counted_at.elapsed());
            tokio::select! {
                next = in_flight.next() => next,
                () = tokio::time::sleep(tick) => {
                    count_first(store, &meta, &mut lock, &mut uncounted).await?;
                    counted_at = Instant::now();
                    continue;
                }
            }
        } else {
            in_flight.next().await
        };
        let Some((shard, n, outcome)) = next else {
            if rows_done && batches.is_empty() {
                break;
            }
            continue;
        };
        batches.finished(shard);
        let (outcome, deltas) = outcome?;
        totals.add(&outcome);
        uncounted[usize::from(shard)].extend(deltas);
        handled += n;
        progress(handled);
        if first && counted_at.elapsed() >= COUNT_EVERY {
            count_first(store, &meta, &mut lock, &mut uncounted).await?;
            counted_at = Instant::now();
        }
    }
    if first {
        count_first(store, &meta, &mut lock, &mut uncounted).await?;
        store.end_first_load(&meta, &lock).await?;
    }

    Ok(report(prepared, change, &totals, started))
}

fn report(
    prepared: &PreparedLoad,
    change: StepChange,
    totals: &BatchOutcome,
    started: Instant,
) -> LoadReport {
    let request = &prepared.request;
    let mut report = LoadReport {
        step: request.step.clone(),
        rows: prepared.sheet.rows,
        sheet_sha256: prepared.sheet.sha256.clone(),
        script_sha256: prepared.digest.clone(),
        step_created: change == StepChange::Created,
        settings_changed: change == StepChange::Updated,
        ..LoadReport::default()
    };
    report.loaded = totals.loaded;
    report.skipped_existing = totals.skipped_existing;
    report.replaced = totals.replaced;
    report.skipped_running = totals.skipped_running;
    report.seconds = started.elapsed().as_secs_f64();
    report
}

/// The step `request` loads into, created or updated as it asks. A step
/// whose tasks wait for others links each task to its upstream tasks as it
/// writes it: conditional writes, never a first load's.
async fn ensure_step<S: TaskStore>(
    store: &S,
    request: &LoadRequest,
    lock: &LoadLock,
) -> Result<(StepMeta, StepChange), StoreError> {
    if request
        .settings
        .after
        .as_ref()
        .is_some_and(|a| !a.is_empty())
    {
        store.ensure_step(&request.step, &request.settings).await
    } else {
        store
            .ensure_step_for_load(&request.step, &request.settings, lock)
            .await
    }
}

/// The steps `meta`'s retry rules escalate to, created where missing with
/// `meta`'s settings (no rules of their own): an escalated task is written
/// there by the worker that escalates it, so the step must exist first.
/// Existing ones are left as they are.
async fn ensure_escalation_steps<S: TaskStore>(
    store: &S,
    meta: &StepMeta,
) -> Result<(), StoreError> {
    for to in crate::rules::escalation_steps(&meta.settings.rules) {
        if let Some(target) = store.step(&to).await? {
            // Two steps escalating to each other would wait for each other.
            if crate::rules::escalation_steps(&target.settings.rules).contains(&meta.step) {
                return Err(StoreError::Service {
                    operation: "load",
                    message: format!(
                        "step {to} escalates to {} itself; an escalation to it would never end. Give {to} other rules (load --step {to} --no-retry-rules) first",
                        meta.step
                    ),
                });
            }
            continue;
        }
        let s = &meta.settings;
        let change = SettingsChange {
            max_attempts: Some(s.max_attempts),
            lease: Some(s.lease),
            timeout: s.timeout,
            shards: Some(meta.shards),
            output_tail: Some(s.output_tail),
            after: None,
            rules: None,
            expire_after: s.expire_after,
        };
        store.ensure_step(&to, &change).await?;
    }
    Ok(())
}

/// How long a first-load lock lasts unless renewed.
pub const LOCK_LEASE: Duration = Duration::from_secs(30);

/// How often a first load counts what it wrote, and renews its lock.
const COUNT_EVERY: Duration = Duration::from_secs(1);

fn hex(bytes: &[u8]) -> String {
    use std::fmt::Write;
    bytes
        .iter()
        .fold(String::with_capacity(bytes.len() * 2), |mut s, b| {
            let _ = write!(s, "{b:02x}");
            s
        })
}

mod batch;
#[cfg(test)]
mod tests;
