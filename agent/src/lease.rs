//! The lease of one attempt, by the agent's own clock: when to renew it,
//! how long a store call on its behalf may take, and when the script must
//! be stopped so that it is dead before anyone may reclaim the task.
//!
//! Another worker may reclaim the task once the lease expired plus the
//! clock-skew margin, by its clock. The script is sent TERM at
//! `expiry - kill grace - safety` and KILL at `expiry - safety`, by ours, so
//! it is dead before the lease even expires, whatever a store call in
//! flight is doing: no call on the lease path is awaited past that point,
//! because each one's deadline ends there.

use std::time::Duration;

use taskfleet::time::Timestamp;
use tokio::time::Instant;

/// Time kept between the script's death and the lease's expiry, for the
/// kill itself and for scheduling delays.
pub const SAFETY: Duration = Duration::from_secs(1);

/// Shortest wait before a failed or timed-out renewal is tried again.
const RETRY_AFTER: Duration = Duration::from_millis(500);

/// The lease of one running attempt.
#[derive(Debug, Clone)]
pub struct Lease {
    length: Duration,
    kill_grace: Duration,
    expires: Instant,
    renew_at: Instant,
}

impl Lease {
    /// A lease of `length` that expires at `expires_at` (wall clock, as
    /// written by the claim), with `kill_grace` between TERM and KILL.
    /// The kill grace is capped at a quarter of the lease, so that a short
    /// lease still leaves time to renew.
    pub fn new(length: Duration, expires_at: Timestamp, kill_grace: Duration) -> Self {
        let now = Instant::now();
        let left = expires_at.since(Timestamp::now());
        let mut lease = Self {
            length,
            kill_grace: kill_grace.min(length / 4),
            expires: now + left,
            renew_at: now,
        };
        lease.renew_at = lease.next_renewal(lease.expires, now);
        lease
    }

    /// How often the lease is renewed: a third of its length.
    pub fn period(&self) -> Duration {
        self.length / 3
    }

    /// How long after a renewal is asked for the next one is due: a
    /// period, or less on a short lease, so that half of the time from
    /// asking to the kill point is left for the answer. With the default
    /// kill grace (10 s, capped at a quarter of the lease), leases of 12 s
    /// and more renew every period; a 3 s one, whose kill point is 1.25 s
    /// after the renewal was asked for, renews every 0.625 s, each renewal
    /// having as long again to come back.
    fn step(&self) -> Duration {
        let to_kill = self.length.saturating_sub(self.kill_grace + SAFETY);
        self.period().min(to_kill / 2)
    }

    /// When the renewal after the lease that expires at `expires` is due
    /// (never before `now`).
    fn next_renewal(&self, expires: Instant, now: Instant) -> Instant {
        expires
            .checked_sub(self.length)
            .map_or(now + self.step(), |asked| asked + self.step())
            .max(now)
    }

    /// The grace between TERM and KILL when the lease forces a kill.
    pub fn kill_grace(&self) -> Duration {
        self.kill_grace
    }

    /// When the next renewal is due.
    pub fn renew_at(&self) -> Instant {
        self.renew_at
    }

    /// When the lease expires, by our clock.
    pub fn expires(&self) -> Instant {
        self.expires
    }

    /// When the script must be sent TERM, if the lease was not renewed.
    pub fn kill_at(&self) -> Instant {
        self.expires
            .checked_sub(self.kill_grace + SAFETY)
            .unwrap_or(self.expires)
    }

    /// Whether the lease is past the point where the script must die.
    pub fn is_over(&self, now: Instant) -> bool {
        now >= self.kill_at()
    }

    /// The renewal to ask for now: the wall-clock expiry to write, and the
    /// instant it corresponds to. Call [`Lease::renewed`] with both if the
    /// store accepts it.
    pub fn next(&self) -> (Timestamp, Instant) {
        (
            Timestamp::now().plus(self.length),
            Instant::now() + self.length,
        )
    }

    /// The store accepted a renewal asked for with [`Lease::next`].
    pub fn renewed(&mut self, expires: Instant) {
        self.expires = self.expires.max(expires);
        self.renew_at = self.next_renewal(expires, Instant::now());
    }

    /// A renewal failed or timed out: try again soon, but not in a loop.
    pub fn renewal_failed(&mut self) {
        self.renew_at = Instant::now() + RETRY_AFTER.min(self.period());
    }

    /// How long the final write (or a renewal beside it) made now may take:
    /// the script is gone, so the limit is the lease's expiry itself.
    pub fn write_deadline(&self) -> Duration {
        self.expires
            .saturating_duration_since(Instant::now())
            .min(self.period())
    }

    /// How long a store call made now may take: never past the kill point,
    /// never longer than a renewal period.
    pub fn call_deadline(&self) -> Duration {
        self.kill_at()
            .saturating_duration_since(Instant::now())
            .min(self.period())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn the_script_dies_before_the_lease_expires() {
        let lease = Lease::new(
            Duration::from_secs(6),
            Timestamp::now().plus(Duration::from_secs(6)),
            Duration::from_secs(10),
        );
        // Kill grace capped at a quarter of the lease.
        assert_eq!(lease.kill_grace(), Duration::from_millis(1500));
        // TERM, then KILL a grace later, still a safety margin before expiry.
        assert!(lease.kill_at() + lease.kill_grace() + SAFETY <= lease.expires());
        // Renewed every 1.75 s, half the 3.5 s to the kill point (a third
        // of the lease would be 2 s).
        // (Measured from the expiry: the lease's start is read in whole
        // milliseconds.)
        assert_eq!(
            lease.expires() - lease.renew_at(),
            Duration::from_millis(6000 - 1750)
        );
        assert!(!lease.is_over(Instant::now()));
        tokio::time::sleep(Duration::from_millis(3600)).await;
        assert!(lease.is_over(Instant::now()));
    }

    #[tokio::test(start_paused = true)]
    async fn no_call_outlives_the_kill_point() {
        let mut lease = Lease::new(
            Duration::from_secs(30),
            Timestamp::now().plus(Duration::from_secs(30)),
            Duration::from_secs(2),
        );
        assert_eq!(lease.call_deadline(), Duration::from_secs(10));
        tokio::time::sleep(Duration::from_secs(25)).await;
        // 30 - 2 - 1 = 27 s: two seconds left.
        assert_eq!(lease.call_deadline(), Duration::from_secs(2));
        lease.renewal_failed();
        assert_eq!(lease.renew_at() - Instant::now(), RETRY_AFTER);
        let (_, until) = lease.next();
        lease.renewed(until);
        assert_eq!(lease.call_deadline(), Duration::from_secs(10));
        tokio::time::sleep(Duration::from_secs(40)).await;
        assert_eq!(lease.call_deadline(), Duration::ZERO);
    }

    #[tokio::test(start_paused = true)]
    async fn a_short_lease_leaves_each_renewal_time_to_answer() {
        // The shortest lease a step may have, its kill grace capped at
        // 0.75 s: the kill point is 1.25 s after each renewal.
        let mut lease = Lease::new(
            Duration::from_secs(3),
            Timestamp::now().plus(Duration::from_secs(3)),
            Duration::from_secs(1),
        );
        for _ in 0..3 {
            tokio::time::sleep_until(lease.renew_at()).await;
            assert_eq!(lease.call_deadline(), Duration::from_millis(625));
            let (_, until) = lease.next();
            // The store answers slowly, within the deadline.
            tokio::time::sleep(Duration::from_millis(400)).await;
            lease.renewed(until);
            assert!(!lease.is_over(Instant::now()));
        }
        // A claim that came back late: the first renewal comes sooner.
        let late = Lease::new(
            Duration::from_secs(3),
            Timestamp::now().plus(Duration::from_millis(2500)),
            Duration::from_secs(1),
        );
        assert_eq!(late.kill_at() - late.renew_at(), Duration::from_millis(625));
        // Long leases renew every third, as before.
        let long = Lease::new(
            Duration::from_secs(300),
            Timestamp::now().plus(Duration::from_secs(300)),
            Duration::from_secs(30),
        );
        assert_eq!(long.expires() - long.renew_at(), Duration::from_secs(200));
    }
}
