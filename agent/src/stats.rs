//! What an agent did, counted as it goes: store calls by kind and claim
//! latencies. Written as JSON at exit with `--stats-file`, for benchmarks
//! and for operators asking "what did this worker cost".

use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use serde::Serialize;
use taskfleet::time::Timestamp;

/// Counters shared by the claim loop and the runners.
#[derive(Debug, Default)]
pub struct Stats {
    /// Index queries for candidates.
    pub candidate_queries: AtomicU64,
    /// Claims that won.
    pub claims_won: AtomicU64,
    /// Claims that lost to another worker.
    pub claims_lost: AtomicU64,
    /// Lease renewals.
    pub heartbeats: AtomicU64,
    /// Final writes (done, failed, retry, release).
    pub finishes: AtomicU64,
    /// Other reads (the step's open tasks per shard, read when the home
    /// shard runs dry and on every idle poll).
    pub other_reads: AtomicU64,
    /// When the latest final write was taken, epoch milliseconds (0: none
    /// yet).
    last_finish_ms: AtomicU64,
    claim_micros: Mutex<Vec<u64>>,
}

/// A snapshot, as written to the stats file.
#[derive(Debug, Clone, Serialize)]
pub struct StatsReport {
    /// Index queries for candidates.
    pub candidate_queries: u64,
    /// Claims that won.
    pub claims_won: u64,
    /// Claims that lost.
    pub claims_lost: u64,
    /// Lease renewals.
    pub heartbeats: u64,
    /// Final writes.
    pub finishes: u64,
    /// Other reads.
    pub other_reads: u64,
    /// When the latest final write was taken; `None` if none was. A
    /// benchmark reads when the last task ended from this instead of
    /// asking the store while it runs.
    pub last_finish_at: Option<Timestamp>,
    /// Latency of each claim (winning or not), microseconds.
    pub claim_micros: Vec<u64>,
}

impl Stats {
    /// Adds one to `counter`.
    pub fn bump(counter: &AtomicU64) {
        counter.fetch_add(1, Ordering::Relaxed);
    }

    /// Records that a final write was just taken.
    pub fn finished_now(&self) {
        let ms = u64::try_from(Timestamp::now().as_millis()).unwrap_or(0);
        self.last_finish_ms.fetch_max(ms, Ordering::Relaxed);
    }

    /// Records one claim's latency.
    pub fn claim_took(&self, d: Duration) {
        let micros = u64::try_from(d.as_micros()).unwrap_or(u64::MAX);
        self.claim_micros
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .push(micros);
    }

    /// The counts so far.
    pub fn report(&self) -> StatsReport {
        let get = |c: &AtomicU64| c.load(Ordering::Relaxed);
        StatsReport {
            candidate_queries: get(&self.candidate_queries),
            claims_won: get(&self.claims_won),
            claims_lost: get(&self.claims_lost),
            heartbeats: get(&self.heartbeats),
            finishes: get(&self.finishes),
            other_reads: get(&self.other_reads),
            last_finish_at: i64::try_from(get(&self.last_finish_ms))
                .ok()
                .filter(|&ms| ms > 0)
                .map(Timestamp::from_millis),
            claim_micros: self
                .claim_micros
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner)
                .clone(),
        }
    }
}
