//! Open-loop traffic: every call is started at its scheduled time, whatever
//! the calls before it did, so a slow client cannot send less and hide its
//! failures.

use std::sync::Arc;
use std::time::Duration;

use parking_lot::Mutex;
use tokio::task::JoinSet;
use tokio::time::Instant;

use crate::clients::{Client, Outcome};

/// One call as its caller saw it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct CallRecord {
    /// When it was scheduled, from the start of the run.
    pub scheduled: Duration,
    /// From its scheduled time to its outcome (the caller's deadline at most).
    pub latency: Duration,
    /// How it ended.
    pub outcome: Outcome,
}

/// The schedule: `rate` calls per second per client for `run`, the same for
/// every client, each call bounded by the caller's `deadline`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Schedule {
    /// Calls per second, per client.
    pub rate: u32,
    /// How long calls are scheduled for.
    pub run: Duration,
    /// How long a caller waits for a call before it gives up.
    pub deadline: Duration,
}

impl Schedule {
    /// How many calls each client makes.
    pub fn calls(&self) -> u64 {
        (self.run.as_secs_f64() * f64::from(self.rate)).round() as u64
    }

    /// When call `i` is due, from the start.
    pub fn due(&self, i: u64) -> Duration {
        Duration::from_secs_f64(i as f64 / f64::from(self.rate.max(1)))
    }
}

/// Runs `schedule` through every client from `start`; returns each client's
/// calls (in the order of `clients`), once every call has ended.
/// `on_progress` is told, now and then, how far into the run the schedule is.
pub async fn drive(
    clients: &[Client],
    schedule: Schedule,
    start: Instant,
    mut on_progress: impl FnMut(Duration),
) -> Vec<Vec<CallRecord>> {
    let calls = schedule.calls();
    let records: Vec<Arc<Mutex<Vec<CallRecord>>>> = clients
        .iter()
        .map(|_| Arc::new(Mutex::new(Vec::with_capacity(calls as usize))))
        .collect();
    let mut tasks = JoinSet::new();
    let tags: Vec<_> = clients.iter().map(|c| c.kind().tag()).collect();
    let progress_every = u64::from(schedule.rate / 20).max(1);
    for i in 0..calls {
        let due = schedule.due(i);
        let at = start + due;
        tokio::time::sleep_until(at).await;
        // Rotate who goes first, so that no client is always the last spawned.
        for k in 0..clients.len() {
            let c = (k + i as usize) % clients.len();
            let client = clients[c].clone();
            let tag = tags[c].clone();
            let record = Arc::clone(&records[c]);
            let deadline = at + schedule.deadline;
            tasks.spawn(async move {
                let outcome = tokio::time::timeout_at(deadline, client.call(Some(tag)))
                    .await
                    .unwrap_or(Outcome::CallerTimeout);
                let latency = Instant::now().saturating_duration_since(at);
                record.lock().push(CallRecord {
                    scheduled: due,
                    latency,
                    outcome,
                });
            });
        }
        // Reap finished calls as we go, so the set stays small.
        while tasks.try_join_next().is_some() {}
        if i % progress_every == 0 {
            on_progress(due);
        }
    }
    while tasks.join_next().await.is_some() {}
    on_progress(schedule.run);
    records
        .into_iter()
        .map(|r| {
            let mut calls = std::mem::take(&mut *r.lock());
            calls.sort_by_key(|c| c.scheduled);
            calls
        })
        .collect()
}
