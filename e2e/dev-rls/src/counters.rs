//! Hit counters kept in limitador's in-memory storage, with windows aligned to the unit.
//!
//! limitador starts a counter's window at its first hit. To get the reference service's
//! fixed, unit-aligned windows (`now - now % unit`), the aligned window (start and length)
//! is part of each counter's identity (a limitador variable): a new window is a new
//! counter, and limitador's own expiry (one unit after the first hit, which is never
//! before the aligned window ends) only frees memory.
//!
//! limitador's expiry runs on real time. With a clock that does not (a [`ManualClock`],
//! e.g. frozen by `--clock-at`), a window can last any real time, so counters are then
//! kept for [`KEEP_SECONDS`] instead: freed only by eviction or a reset, never while
//! their window is current.
//!
//! [`ManualClock`]: crate::ManualClock

use std::collections::HashMap;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};

use limitador::counter::Counter;
use limitador::limit::{Context, Expression, Limit};
use limitador::storage::in_memory::InMemoryStorage;
use limitador::storage::CounterStorage;

/// Distinct live counters kept before the least recently used are evicted.
const CACHE_SIZE: u64 = 100_000;
const ENTRIES_VAR: &str = "entries";
const WINDOW_VAR: &str = "window";
/// How long limitador keeps a counter when the service's clock does not follow real time
/// (ten years).
const KEEP_SECONDS: u64 = 10 * 365 * 86_400;

/// Outcome of adding hits to one counter.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Hit {
    /// The counter's value after adding the hits exceeds the limit.
    pub over_limit: bool,
    /// Hits left in the window after this one (0 when over the limit).
    pub remaining: u64,
}

/// Counting failed inside limitador.
#[derive(Debug)]
pub(crate) struct CountError(pub String);

pub(crate) struct Counters {
    state: Mutex<State>,
    variables: Vec<Expression>,
    /// The service's clock follows real time, as limitador's expiry does.
    real_time: bool,
}

struct State {
    storage: InMemoryStorage,
    limits: HashMap<(String, u64, u32), Arc<Limit>>,
}

impl State {
    fn new() -> Self {
        State {
            storage: InMemoryStorage::new(CACHE_SIZE),
            limits: HashMap::new(),
        }
    }
}

impl Counters {
    /// Counters for a service whose clock follows real time (`real_time`) or not.
    pub(crate) fn new(real_time: bool) -> Result<Self, CountError> {
        let variables = [ENTRIES_VAR, WINDOW_VAR]
            .into_iter()
            .map(|name| Expression::parse(name).map_err(|e| CountError(e.to_string())))
            .collect::<Result<Vec<_>, _>>()?;
        Ok(Counters {
            state: Mutex::new(State::new()),
            variables,
            real_time,
        })
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Drops every counter.
    pub(crate) fn clear(&self) {
        *self.lock() = State::new();
    }

    /// Adds `hits` to the counter identified by `domain` + `key` in the window starting at
    /// `window_start` (`window_seconds` long) and reports it against `max` like the reference:
    /// over the limit when the new value exceeds `max`; hits are kept even when over.
    pub(crate) fn hit(
        &self,
        domain: &str,
        key: &str,
        window_start: u64,
        window_seconds: u64,
        max: u32,
        hits: u64,
    ) -> Result<Hit, CountError> {
        let mut state = self.lock();
        let ttl = if self.real_time {
            window_seconds
        } else {
            KEEP_SECONDS.max(window_seconds)
        };
        let limit = state
            .limits
            .entry((domain.to_owned(), window_seconds, max))
            .or_insert_with(|| {
                Arc::new(Limit::new(
                    domain,
                    u64::from(max),
                    ttl,
                    [],
                    self.variables.iter().cloned(),
                ))
            })
            .clone();
        let ctx = Context::from(HashMap::from([
            (ENTRIES_VAR.to_owned(), key.to_owned()),
            (
                WINDOW_VAR.to_owned(),
                format!("{window_start}+{window_seconds}"),
            ),
        ]));
        let counter = Counter::new(limit, &ctx)
            .map_err(|e| CountError(e.to_string()))?
            .ok_or_else(|| CountError("counter variables did not resolve".to_owned()))?;

        let storage = &mut state.storage;
        storage
            .update_counter(&counter, hits)
            .map_err(|e| CountError(e.to_string()))?;
        let within = storage
            .is_within_limits(&counter, 0)
            .map_err(|e| CountError(e.to_string()))?;
        let mut probe = vec![counter];
        storage
            .check(&mut probe, 0)
            .map_err(|e| CountError(e.to_string()))?;
        let remaining = probe.first().and_then(Counter::remaining).unwrap_or(0);
        Ok(Hit {
            over_limit: !within,
            remaining: if within { remaining } else { 0 },
        })
    }
}
