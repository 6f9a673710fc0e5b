//! What the load generator observed, per simulated sidecar: every response
//! (type, version, size, when it arrived and when its ACK or NACK was
//! sent), when it was first fully synced, how often its stream was opened
//! and reset. Times are offsets from the recorder's start, one clock for
//! the whole run.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Mutex, PoisonError};
use std::time::{Duration, Instant};
use tokio::sync::watch;
use translator::ResourceType;

/// Responses kept per proxy; past it they are counted, not kept, so a long
/// run cannot grow without bound.
pub const MAX_RESPONSES: usize = 4096;

/// One response as the sidecar handled it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ResponseRecord {
    pub kind: ResourceType,
    pub version: String,
    /// Encoded size of the whole response message.
    pub bytes: usize,
    pub resources: usize,
    pub received: Duration,
    /// When the ACK (or NACK) was handed to the stream; `None` if the
    /// stream broke first.
    pub acked: Option<Duration>,
    pub nack: bool,
}

/// Everything observed of one proxy.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ProxyRecord {
    /// Streams that opened (the first connect and every reconnect).
    pub streams_opened: u32,
    /// Connections or streams that failed or ended.
    pub resets: u32,
    /// When each reset happened (the first [`MAX_RESPONSES`]).
    pub reset_times: Vec<Duration>,
    /// Why the last one did.
    pub last_reset: Option<String>,
    pub responses: Vec<ResponseRecord>,
    /// Responses past [`MAX_RESPONSES`], not kept.
    pub dropped_responses: u64,
    /// When the proxy first held everything it asked for.
    pub first_synced: Option<Duration>,
    /// Whether it holds everything it asked for now.
    pub synced: bool,
    /// Whether its stream is open now.
    pub connected: bool,
}

impl ProxyRecord {
    pub(super) fn response(&mut self, record: ResponseRecord) {
        if self.responses.len() < MAX_RESPONSES {
            self.responses.push(record);
        } else {
            self.dropped_responses += 1;
        }
    }

    pub(super) fn reset(&mut self, at: Duration, why: String) {
        self.resets += 1;
        self.connected = false;
        self.synced = false;
        if self.reset_times.len() < MAX_RESPONSES {
            self.reset_times.push(at);
        }
        self.last_reset = Some(why);
    }

    /// Responses received at or after `t`.
    pub fn since(&self, t: Duration) -> impl Iterator<Item = &ResponseRecord> {
        self.responses.iter().filter(move |r| r.received >= t)
    }
}

/// The records of all proxies of a run, and a signal that ticks on every
/// update (so a waiter wakes on news instead of polling).
#[derive(Debug)]
pub struct Recorder {
    start: Instant,
    proxies: Vec<Mutex<ProxyRecord>>,
    /// Proxies with `first_synced` set: read on every event, so kept apart
    /// from the records.
    synced: AtomicUsize,
    events: watch::Sender<u64>,
}

impl Recorder {
    pub fn new(proxies: usize) -> Self {
        Recorder {
            start: Instant::now(),
            proxies: (0..proxies)
                .map(|_| Mutex::new(ProxyRecord::default()))
                .collect(),
            synced: AtomicUsize::new(0),
            events: watch::channel(0).0,
        }
    }

    /// Time since the recorder started.
    pub fn now(&self) -> Duration {
        self.start.elapsed()
    }

    pub fn len(&self) -> usize {
        self.proxies.len()
    }

    pub fn is_empty(&self) -> bool {
        self.proxies.is_empty()
    }

    /// Applies `change` to proxy `index`'s record and signals it.
    pub fn update<R>(&self, index: usize, change: impl FnOnce(&mut ProxyRecord) -> R) -> R {
        let out = match self.proxies.get(index) {
            Some(slot) => {
                let mut record = slot.lock().unwrap_or_else(PoisonError::into_inner);
                let was_synced = record.first_synced.is_some();
                let out = change(&mut record);
                if !was_synced && record.first_synced.is_some() {
                    self.synced.fetch_add(1, Ordering::Relaxed);
                }
                out
            }
            None => change(&mut ProxyRecord::default()),
        };
        self.events.send_modify(|n| *n = n.wrapping_add(1));
        out
    }

    /// How many proxies were fully synced at least once.
    pub fn synced(&self) -> usize {
        self.synced.load(Ordering::Relaxed)
    }

    /// Reads every record without copying them.
    pub fn read<R>(&self, look: impl FnOnce(&[&ProxyRecord]) -> R) -> R {
        let guards: Vec<_> = self
            .proxies
            .iter()
            .map(|p| p.lock().unwrap_or_else(PoisonError::into_inner))
            .collect();
        let records: Vec<&ProxyRecord> = guards.iter().map(|g| &**g).collect();
        look(&records)
    }

    /// A copy of every record.
    pub fn snapshot(&self) -> Vec<ProxyRecord> {
        self.read(|all| all.iter().map(|r| (*r).clone()).collect())
    }

    /// Ticks on every update.
    pub fn events(&self) -> watch::Receiver<u64> {
        self.events.subscribe()
    }
}
