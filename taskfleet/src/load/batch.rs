//! The batches of a load: written one shard each, as conditional inserts
//! (an existing task is kept, replaced with `replace`, or loaded again
//! when it has expired) or, on a step's first load, as plain puts under
//! its lock, counted as it goes.

use std::collections::VecDeque;

use super::{BATCH, LOCK_LEASE};
use crate::model::{LoadLock, StepMeta, Task, TaskState};
use crate::schema;
use crate::store::{ReplaceOutcome, StoreError, TaskStore};
use crate::time::Timestamp;
use crate::transition;

/// `deltas` times `k`.
pub(super) fn scaled(deltas: &[(&'static str, i64)], k: usize) -> Vec<(&'static str, i64)> {
    deltas.iter().map(|(c, by)| (*c, by * k as i64)).collect()
}

/// Writes one batch: plain puts under the first-load `lock`, else
/// conditional inserts. Returns what happened and the counter deltas still
/// to add.
pub(super) async fn write<S: TaskStore>(
    store: &S,
    meta: &StepMeta,
    lock: Option<&LoadLock>,
    batch: &[Task],
    replace: bool,
    after: &[String],
) -> Result<(BatchOutcome, Vec<(&'static str, i64)>), StoreError> {
    let Some(lock) = lock else {
        return Ok((
            write_batch(store, meta, batch, replace, after).await?,
            Vec::new(),
        ));
    };
    // Every task of the batch is new and ends up written by this load; `k`
    // of them are not counted yet.
    let k = store.put_first(meta, lock, batch).await?;
    let deltas = scaled(&transition::insert(&batch[0]).counters, k);
    let outcome = BatchOutcome {
        loaded: batch.len(),
        ..BatchOutcome::default()
    };
    Ok((outcome, deltas))
}

/// Counts what a first load wrote since it last counted, and renews its
/// lock.
pub(super) async fn count_first<S: TaskStore>(
    store: &S,
    meta: &StepMeta,
    lock: &mut LoadLock,
    uncounted: &mut [Vec<(&'static str, i64)>],
) -> Result<(), StoreError> {
    let counts: Vec<(u16, Vec<(&'static str, i64)>)> = uncounted
        .iter_mut()
        .enumerate()
        .filter(|(_, d)| !d.is_empty())
        .map(|(shard, d)| (shard as u16, std::mem::take(d)))
        .collect();
    let renewed = Timestamp::now().plus(LOCK_LEASE);
    store.count_first(meta, lock, renewed, &counts).await?;
    lock.until = renewed;
    Ok(())
}

#[derive(Debug, Default)]
pub(super) struct BatchOutcome {
    pub(super) loaded: usize,
    pub(super) skipped_existing: usize,
    pub(super) replaced: usize,
    pub(super) skipped_running: usize,
}

impl BatchOutcome {
    pub(super) fn add(&mut self, other: &BatchOutcome) {
        self.loaded += other.loaded;
        self.skipped_existing += other.skipped_existing;
        self.replaced += other.replaced;
        self.skipped_running += other.skipped_running;
    }
}

/// Most tasks held in per-shard buffers: with many shards, the fullest
/// buffer goes out before it is a full batch, so that memory stays bounded
/// whatever the shard count.
const MAX_BUFFERED: usize = 8192;

/// Rows grouped by shard into batches of up to [`BATCH`] tasks, and which
/// shards have a batch in flight.
pub(super) struct Batcher {
    buffers: Vec<Vec<Task>>,
    buffered: usize,
    pub(super) ready: VecDeque<(u16, Vec<Task>)>,
    busy: Vec<bool>,
}

impl Batcher {
    pub(super) fn new(shards: u16) -> Self {
        let shards = usize::from(shards.max(1));
        Self {
            buffers: (0..shards).map(|_| Vec::new()).collect(),
            buffered: 0,
            ready: VecDeque::new(),
            busy: vec![false; shards],
        }
    }

    pub(super) fn push(&mut self, task: Task, meta: &StepMeta) {
        let shard = usize::from(schema::shard_of(&task.task_id, meta.shards));
        self.buffers[shard].push(task);
        self.buffered += 1;
        if self.buffers[shard].len() >= BATCH {
            self.close(shard);
        } else if self.buffered > MAX_BUFFERED {
            let fullest = (0..self.buffers.len())
                .max_by_key(|&s| self.buffers[s].len())
                .unwrap_or(shard);
            self.close(fullest);
        }
    }

    pub(super) fn close(&mut self, shard: usize) {
        let batch = std::mem::take(&mut self.buffers[shard]);
        self.buffered -= batch.len();
        self.ready.push_back((shard as u16, batch));
    }

    pub(super) fn flush_all(&mut self) {
        for shard in 0..self.buffers.len() {
            if !self.buffers[shard].is_empty() {
                self.close(shard);
            }
        }
    }

    /// Whether a ready batch's shard has nothing in flight.
    pub(super) fn startable(&self) -> bool {
        self.ready.iter().any(|(s, _)| !self.busy[usize::from(*s)])
    }

    pub(super) fn start(&mut self) -> Option<(u16, Vec<Task>)> {
        let i = self
            .ready
            .iter()
            .position(|(s, _)| !self.busy[usize::from(*s)])?;
        let (shard, batch) = self.ready.remove(i)?;
        self.busy[usize::from(shard)] = true;
        Some((shard, batch))
    }

    pub(super) fn finished(&mut self, shard: u16) {
        self.busy[usize::from(shard)] = false;
    }

    pub(super) fn is_empty(&self) -> bool {
        self.ready.is_empty() && self.buffered == 0
    }
}

pub(super) async fn write_batch<S: TaskStore>(
    store: &S,
    meta: &StepMeta,
    batch: &[Task],
    replace: bool,
    after: &[String],
) -> Result<BatchOutcome, StoreError> {
    let inserted = if after.is_empty() {
        store.insert(meta, batch).await?
    } else {
        store.insert_after(meta, batch, after).await?
    };
    let mut outcome = BatchOutcome {
        loaded: inserted.inserted,
        ..BatchOutcome::default()
    };
    let now = Timestamp::now();
    for old in inserted.existing {
        // Gone from every count and read, not yet deleted by the table's
        // TTL: loaded again as a new task would be (over the item, whose
        // attempt numbers go on).
        let expired = old.expired(now);
        if !replace && !expired {
            outcome.skipped_existing += 1;
        } else if old.state == TaskState::Running {
            outcome.skipped_running += 1;
        } else {
            let new = batch
                .iter()
                .find(|t| t.task_id == old.task_id)
                .expect("existing tasks come from the batch");
            match store.replace(meta, &old, new).await? {
                ReplaceOutcome::Replaced if expired => outcome.loaded += 1,
                ReplaceOutcome::Replaced => outcome.replaced += 1,
                // Claimed (or otherwise changed) since we looked: leave it.
                ReplaceOutcome::Changed => outcome.skipped_running += 1,
            }
        }
    }
    Ok(outcome)
}
