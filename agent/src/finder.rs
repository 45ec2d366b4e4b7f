//! Finding the next task to claim, at a cost that does not grow with the
//! number of agents or shards.
//!
//! - An agent keeps a home shard while it has pending tasks: one index
//!   query there gives a page of candidates, claimed one by one while they
//!   are fresh. Agents launched together know their place among each other
//!   (`--launch-index`, EC2's `ami-launch-index`) and start one to each end
//!   of each shard; they meet only where two ends meet, and the shards
//!   empty at about the same time instead of leaving a few for the whole
//!   fleet to crowd at the end of the step.
//! - When the home shard runs dry, one read of the step's counters
//!   ([`TaskStore::open_per_shard`]) says which shards still have open
//!   tasks and how many. Only those are queried, at most
//!   [`PENDING_QUERIES`] per call, each picked at random in proportion to
//!   its open tasks: agents spread out as the work is spread. A shard found
//!   with no pending task is not asked again for a while unless its count
//!   rises. An empty step costs that one read and nothing else.
//! - A page of pending candidates is claimed in index order, from the
//!   oldest or from the newest end, when it is full. A page that is not
//!   full holds the shard's last tasks: an agent that has been working the
//!   shard from one end takes its half of them, in order, and leaves the
//!   other half to the one at the other end; one just arriving takes a few
//!   from a random one on.
//! - A lost claim means another worker is taking the same tasks: the agent
//!   drops its spare candidates and turns to the other end of the shard, so
//!   two workers share a shard without meeting until it is nearly empty.
//!   Losing again there, it starts from a random point between the ends
//!   (a load spreads its tasks' places in the index over a second, so there
//!   are points to start from), a few times, before it leaves the shard to
//!   the others. Two lost claims in one call end the call: the agent waits
//!   a moment ([`Finder::contended`]) instead of trying again at once.
//! - Expired leases are looked for in the running partitions of open shards
//!   when no pending task was found, at most every quarter of a lease: a
//!   dead worker's task waits at most that much beyond its lease and the
//!   skew margin, and an idle fleet does not search for dead workers on
//!   every poll. An agent that starts with no pending work looks at once.

use std::collections::VecDeque;
use std::time::Duration;

use rand::Rng;
use taskfleet::model::{StepMeta, Task, TaskState};
use taskfleet::store::{Candidate, Claim, Order, StoreError, TaskStore};
use taskfleet::time::Timestamp;
use tokio::time::Instant;

use crate::stats::Stats;

/// Candidates asked for per index query of running tasks.
pub const CANDIDATES_PER_QUERY: usize = 10;

/// Candidates asked for per index query of pending tasks: a full page
/// means the shard has work beyond it, and its first [`PENDING_TAKEN`]
/// are claimed in order; a shorter one is the shard's last pending tasks.
pub const PENDING_PER_QUERY: usize = 30;

/// Candidates of a full page of pending tasks claimed before asking again.
pub const PENDING_TAKEN: usize = 20;

/// Most pending queries one call makes once its home shard has run dry.
pub const PENDING_QUERIES: usize = 2;

/// Spare candidates older than this are dropped: another worker may have
/// claimed them meanwhile. (A stale spare costs one lost claim, after
/// which the rest are dropped; asking again costs a query whether or not
/// they were taken.)
const SPARE_FRESH: Duration = Duration::from_secs(15);

/// Spares kept from a page that is not full: others are taking from it.
const SHORT_SPARES: usize = 3;

/// Claims lost in one call before it gives the others a moment
/// ([`Finder::contended`]): near the end of a step many workers choose from
/// few tasks, and trying again at once would mostly lose again.
const LOSSES_PER_CALL: u32 = 2;

/// Random starting points tried in a shard, each after a lost claim,
/// before leaving it.
const JUMPS: u32 = 3;

/// Claims of this agent remembered, so that an index that lags behind its
/// table (DynamoDB's indexes do) does not offer them back as pending.
const RECENT_CLAIMS: usize = 64;

/// How long a shard found with no pending task is left alone while its
/// open count does not rise. Near the end of a step of short tasks most
/// shards hold only running tasks, and agents asked their pending index on
/// every poll; a task that turns pending without raising the count (a
/// retry after a failed attempt, or a dependant let through while another
/// task of the shard finished) waits at most this much longer. Idle polls
/// further apart than this (the longest poll is 20 s by default) ask again
/// each time.
const EMPTY_FOR: Duration = Duration::from_secs(10);

/// Finds and claims tasks for one agent; see the module documentation.
#[derive(Debug)]
pub struct Finder {
    /// The end of the index pending tasks are taken from.
    order: Order,
    /// The shard where the agent last turned around after a lost claim.
    turned: Option<u16>,
    spare: Vec<Candidate>,
    spare_at: Option<Instant>,
    home: Option<u16>,
    /// The shard last left after a lost claim: not picked again at once.
    left: Option<u16>,
    /// (task, attempt) of this agent's latest claims.
    recent: VecDeque<(String, u32)>,
    /// When running partitions were last searched for expired leases.
    swept_at: Option<Instant>,
    /// Open tasks of the step, if the last call read the counters.
    open: Option<u64>,
    /// The oldest and newest place in the home shard's pending index, as
    /// last seen from each end.
    ends: (Option<Timestamp>, Option<Timestamp>),
    /// Where in the home shard the next query starts, when not at an end.
    from: Option<Timestamp>,
    /// Random starting points taken in the home shard since joining it.
    jumps: u32,
    /// Claims lost in this call.
    losses: u32,
    /// Shards found with no pending task: when, and their open count from
    /// the first counter read since (`None` until then).
    empty: Vec<(u16, Instant, Option<u64>)>,
    /// The candidates in hand are this agent's half of its home shard's
    /// last pending tasks.
    last_half: bool,
}

impl Finder {
    /// A finder for `owner`. With `spread`, the agent's place among the
    /// agents launched with it (`--launch-index`), agent `i` starts in shard
    /// `i mod shards`, the first round of a fleet from the oldest end and
    /// the second from the newest: the agents of one launch, up to twice as
    /// many as shards, start with no two on the same end of a shard, and
    /// the shards drain together. (A later launch takes the places past
    /// those of the step's live agents, see `taskfleet:first-place`; where
    /// two agents share a place anyway they meet and move on as after any
    /// lost claim.) Without it, the agent starts at one end or the
    /// other by its name (half of a fleet from each) in a shard it picks.
    pub fn new(owner: &str, spread: Option<u32>, shards: u16) -> Self {
        let newest = match spread {
            Some(i) if shards > 0 => (i / u32::from(shards)) % 2 == 1,
            // The stable string hash that spreads tasks over shards.
            _ => taskfleet::schema::shard_of(owner, 2) == 1,
        };
        let home = spread
            .filter(|_| shards > 0)
            .map(|i| u16::try_from(i % u32::from(shards)).expect("below a u16"));
        Self {
            order: if newest {
                Order::NewestFirst
            } else {
                Order::OldestFirst
            },
            turned: None,
            spare: Vec::new(),
            spare_at: None,
            home,
            left: None,
            recent: VecDeque::new(),
            swept_at: None,
            open: None,
            ends: (None, None),
            from: None,
            jumps: 0,
            losses: 0,
            empty: Vec::new(),
            last_half: false,
        }
    }

    /// Whether the last call to [`Finder::claim_next`] found nothing
    /// because others took the tasks it tried: there is work, and the
    /// agent should try again shortly rather than wait as if idle.
    pub fn contended(&self) -> bool {
        self.losses >= LOSSES_PER_CALL
    }

    /// Pending and running tasks of the whole step, as the last call to
    /// [`Finder::claim_next`] read them (`None`: it did not read them).
    pub fn open(&self) -> Option<u64> {
        self.open
    }

    /// Claims the next task; `None` when nothing is claimable now.
    pub async fn claim_next<S: TaskStore>(
        &mut self,
        store: &S,
        meta: &StepMeta,
        owner: &str,
        stats: &Stats,
    ) -> Result<Option<Task>, StoreError> {
        self.open = None;
        self.losses = 0;
        if self.spare_at.is_none_or(|at| at.elapsed() > SPARE_FRESH) {
            // Walking from a point, go on from the first candidate not
            // taken rather than past the dropped ones.
            if let (Some(_), Some(next)) = (self.from, self.spare.last()) {
                self.from = Some(next.state_at);
            }
            self.spare.clear();
        }
        while let Some(candidate) = self.spare.pop() {
            if let Some(task) = self
                .try_claim(store, meta, &candidate, owner, stats)
                .await?
            {
                return Ok(Some(task));
            }
            tracing::debug!(shard = ?self.home, "spare lost");
            self.lost();
        }
        let mut tried = Vec::new();
        if let Some(home) = self.home {
            tried.push(home);
            if let Some(task) = self.take_from(store, meta, home, owner, stats).await? {
                return Ok(Some(task));
            }
            if self.contended() {
                return Ok(None);
            }
        }

        Stats::bump(&stats.other_reads);
        let open = store.open_per_shard(meta).await?;
        self.open = Some(open.iter().sum());
        tracing::debug!(open = ?open, "counters read");
        self.count_empty(&open);
        let mut shards: Vec<(u16, u64)> = (0..meta.shards)
            .zip(open.iter().copied())
            .filter(|&(shard, n)| n > 0 && !tried.contains(&shard) && !self.known_empty(shard, n))
            .collect();
        for _ in 0..PENDING_QUERIES {
            let Some(shard) = pick(&mut shards, self.left) else {
                break;
            };
            let found = self.take_from(store, meta, shard, owner, stats).await?;
            // A shard just found empty is compared with the count read
            // before its query, not with the next one.
            self.count_empty(&open);
            if let Some(task) = found {
                return Ok(Some(task));
            }
            if self.contended() {
                return Ok(None);
            }
        }

        if self
            .swept_at
            .is_some_and(|at| at.elapsed() < meta.settings.lease / 4)
        {
            return Ok(None);
        }
        // A sweep that reclaims a task may find more at once: only a sweep
        // that finds nothing waits for the next quarter lease.
        for shard in (0..meta.shards).filter(|&k| open.get(usize::from(k)).is_some_and(|&n| n > 0))
        {
            Stats::bump(&stats.candidate_queries);
            let found = store
                .candidates(
                    meta,
                    shard,
                    TaskState::Running,
                    Timestamp::now(),
                    CANDIDATES_PER_QUERY,
                    Order::OldestFirst,
                )
                .await?;
            tracing::debug!(shard, found = found.len(), "expired-lease query");
            for candidate in found {
                if let Some(task) = self
                    .try_claim(store, meta, &candidate, owner, stats)
                    .await?
                {
                    return Ok(Some(task));
                }
            }
        }
        self.swept_at = Some(Instant::now());
        Ok(None)
    }

    /// Queries one shard's pending tasks and claims the first; keeps the
    /// rest as spares and the shard as home when it wins. When it loses it
    /// turns to the other end of the shard once, then starts from random
    /// points between the ends (the ones it has seen) a few times, then
    /// leaves it.
    async fn take_from<S: TaskStore>(
        &mut self,
        store: &S,
        meta: &StepMeta,
        shard: u16,
        owner: &str,
        stats: &Stats,
    ) -> Result<Option<Task>, StoreError> {
        let joining = self.home != Some(shard);
        if joining {
            self.ends = (None, None);
            self.from = None;
            self.jumps = 0;
        }
        loop {
            let order = self.from.map_or(self.order, Order::OldestFrom);
            Stats::bump(&stats.candidate_queries);
            let mut found = store
                .candidates(
                    meta,
                    shard,
                    TaskState::Pending,
                    Timestamp::now(),
                    PENDING_PER_QUERY,
                    order,
                )
                .await?;
            tracing::debug!(shard, order = ?order, found = found.len(), "pending query");
            let full = found.len() == PENDING_PER_QUERY;
            match order {
                Order::OldestFirst => self.ends.0 = found.first().map(|c| c.state_at),
                Order::NewestFirst => self.ends.1 = found.first().map(|c| c.state_at),
                Order::OldestFrom(_) if !full => {
                    // Past the newest: the next query starts from an end.
                    self.from = None;
                }
                Order::OldestFrom(_) => {
                    // On from the last of the candidates taken.
                    self.from = found.get(PENDING_TAKEN - 1).map(|c| c.state_at);
                }
            }
            found.retain(|c| {
                !self
                    .recent
                    .iter()
                    .any(|(id, attempt)| *id == c.task_id && c.attempt < *attempt)
            });
            if found.is_empty() {
                if matches!(order, Order::OldestFrom(_)) {
                    // Nothing from that point on: look from the end.
                    self.from = None;
                    continue;
                }
                if self.home == Some(shard) {
                    self.home = None;
                }
                self.empty.retain(|e| e.0 != shard);
                self.empty.push((shard, Instant::now(), None));
                return Ok(None);
            }
            self.empty.retain(|e| e.0 != shard);
            self.last_half = !full && !joining;
            if full || !joining {
                // Claimed in index order: the first is last. An agent that
                // has been taking this shard from one end goes on from it
                // to the last few tasks too, but only to its half of them:
                // the other half is the one working from the other end.
                found.truncate(if full {
                    PENDING_TAKEN
                } else {
                    found.len().div_ceil(2).min(1 + SHORT_SPARES)
                });
                found.reverse();
            } else {
                // Joining a shard at its last pending tasks, which the
                // agents already there are taking from the ends: from a
                // random one on, and only a few of them.
                let start = rand::rng().random_range(0..found.len());
                found.rotate_left(start);
                found.truncate(1 + SHORT_SPARES);
                found.reverse();
            }
            let candidate = found.pop().expect("not empty");
            self.home = Some(shard);
            if let Some(task) = self
                .try_claim(store, meta, &candidate, owner, stats)
                .await?
            {
                self.spare = found;
                self.spare_at = Some(Instant::now());
                self.swept_at.get_or_insert_with(Instant::now);
                return Ok(Some(task));
            }
            tracing::debug!(shard, order = ?order, full, "fresh candidate lost");
            self.lost();
            if self.home != Some(shard) || self.contended() {
                return Ok(None);
            }
        }
    }

    /// Notes each shard's open count beside the shards found empty since the
    /// last counter read, and forgets the findings that are too old.
    fn count_empty(&mut self, open: &[u64]) {
        self.empty.retain(|e| e.1.elapsed() < EMPTY_FOR);
        for (shard, _, count) in &mut self.empty {
            count.get_or_insert(open.get(usize::from(*shard)).copied().unwrap_or(0));
        }
    }

    /// Whether `shard`, now counting `open` open tasks, was found with no
    /// pending task lately and has not gained open tasks since: a load, a
    /// retry of a failed task or a dependant let through would have raised
    /// the count.
    fn known_empty(&self, shard: u16, open: u64) -> bool {
        self.empty
            .iter()
            .any(|&(k, _, count)| k == shard && count.is_some_and(|c| open <= c))
    }

    /// Another worker is taking the same tasks: drop the spare candidates
    /// and leave the shard if this was its last tasks, else turn to the
    /// other end of the home shard; having turned there
    /// already, start from a random point between its ends; having done
    /// that [`JUMPS`] times, leave it to the others.
    fn lost(&mut self) {
        self.spare.clear();
        self.losses += 1;
        if std::mem::take(&mut self.last_half) {
            // Where this end met the other: the rest is the other half,
            // the one the agent working from the other end takes.
            self.from = None;
            self.left = self.home.take();
            return;
        }
        if self.home.is_some() && self.turned != self.home {
            self.turned = self.home;
            self.from = None;
            self.order = match self.order {
                Order::OldestFirst => Order::NewestFirst,
                _ => Order::OldestFirst,
            };
            return;
        }
        if self.home.is_some() && self.jump() {
            return;
        }
        self.from = None;
        self.left = self.home.take();
    }

    /// Starts the next query of the home shard at a random point between
    /// the ends seen, unless that was done [`JUMPS`] times already.
    fn jump(&mut self) -> bool {
        let (Some(oldest), Some(newest)) = self.ends else {
            return false;
        };
        if newest <= oldest || self.jumps >= JUMPS {
            return false;
        }
        self.jumps += 1;
        self.from = Some(Timestamp::from_millis(
            rand::rng().random_range(oldest.as_millis()..=newest.as_millis()),
        ));
        true
    }

    async fn try_claim<S: TaskStore>(
        &mut self,
        store: &S,
        meta: &StepMeta,
        candidate: &Candidate,
        owner: &str,
        stats: &Stats,
    ) -> Result<Option<Task>, StoreError> {
        let task = try_claim(store, meta, candidate, owner, stats).await?;
        if let Some(task) = &task {
            if self.recent.len() >= RECENT_CLAIMS {
                self.recent.pop_front();
            }
            self.recent.push_back((task.task_id.clone(), task.attempt));
        }
        Ok(task)
    }
}

/// Takes one of `shards` (shard, open tasks) out, at random in proportion
/// to its open tasks, avoiding `avoid` while there is another. Agents
/// spread over the shards as the work is spread; and near the end of a
/// step, when most shards count only a running task or two, a shard with
/// many tasks left weighs as much as many of those (the counts include
/// running tasks, so it is likelier, not certain, to be picked).
fn pick(shards: &mut Vec<(u16, u64)>, avoid: Option<u16>) -> Option<u16> {
    let weight = |&(shard, n): &(u16, u64)| {
        if Some(shard) == avoid && shards.len() > 1 {
            0
        } else {
            n
        }
    };
    let total: u64 = shards.iter().map(weight).sum();
    if total == 0 {
        return None;
    }
    let mut at = rand::rng().random_range(0..total);
    let i = shards
        .iter()
        .position(|s| {
            let w = weight(s);
            if at < w {
                true
            } else {
                at -= w;
                false
            }
        })
        .expect("a draw below the total falls in one shard");
    Some(shards.swap_remove(i).0)
}

/// One claim, bounded by a third of the lease.
pub async fn try_claim<S: TaskStore>(
    store: &S,
    meta: &StepMeta,
    candidate: &Candidate,
    owner: &str,
    stats: &Stats,
) -> Result<Option<Task>, StoreError> {
    let started = Instant::now();
    // A claim that takes longer than this would leave too little of its
    // lease to run the script: give up on it (if it did land, the lease
    // expires and the task is reclaimed).
    let deadline = meta.settings.lease / 3;
    let claim = tokio::time::timeout(
        deadline,
        store.claim(meta, candidate, owner, Timestamp::now()),
    )
    .await
    .unwrap_or_else(|_| {
        Err(StoreError::Unreachable {
            endpoint: store.describe(),
            detail: format!("a claim got no answer within {deadline:?}"),
        })
    });
    stats.claim_took(started.elapsed());
    match claim? {
        Claim::Claimed(task) => {
            Stats::bump(&stats.claims_won);
            Ok(Some(*task))
        }
        Claim::Lost => {
            Stats::bump(&stats.claims_lost);
            tracing::debug!(task_id = %candidate.task_id, state = ?candidate.state, "claim lost to another worker");
            Ok(None)
        }
        Claim::FailedLost => {
            tracing::warn!(task_id = %candidate.task_id, "owner died on the last attempt; task marked failed");
            Ok(None)
        }
    }
}
