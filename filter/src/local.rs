//! What the filter decides without calling the rate-limit service: denials
//! it repeats (the over-limit cache) and hits it spends from a lease. Both
//! live in Envoy's shared data, which every worker of the Envoy process
//! reads, in a fixed number of slots each: a descriptor's slot is a hash of
//! its key, and the slot holds the whole key, so a collision only evicts an
//! entry (one more call), never mistakes one descriptor for another. Keys
//! longer than [`MAX_KEY`] are never stored.
//!
//! Pure: the host is reached through [`Shared`].

/// Shared data as the filter sees it (proxy-wasm `get_shared_data` /
/// `set_shared_data`), and the host's clock.
pub trait Shared {
    /// A slot's value and its compare-and-swap token; `None` when unset.
    fn shared_get(&self, key: &str) -> Option<(Vec<u8>, u32)>;
    /// Stores a value if the slot's token is still `cas` (0: whatever it
    /// is); `false` when another writer came first or the host failed.
    fn shared_set(&self, key: &str, value: &[u8], cas: u32) -> bool;
    /// Wall-clock milliseconds since the Unix epoch.
    fn now_ms(&self) -> u64;
}

/// The longest key (configuration prefix + descriptor) stored.
pub const MAX_KEY: usize = 1024;
/// Compare-and-swap attempts before a lease gives up and asks the service.
const CAS_ATTEMPTS: usize = 8;

/// A slot's name (`mcp_ratelimit.<kind>.<n>`), built without allocating.
struct SlotName {
    buf: [u8; 48],
    len: usize,
}

impl std::ops::Deref for SlotName {
    type Target = str;
    fn deref(&self) -> &str {
        std::str::from_utf8(self.buf.get(..self.len).unwrap_or_default()).unwrap_or_default()
    }
}

/// A descriptor's slot: FNV-1a of its key, modulo the slots.
fn slot(kind: &str, key: &[u8], slots: u32) -> SlotName {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in key {
        h ^= u64::from(*b);
        h = h.wrapping_mul(0x0000_0100_0000_01b3);
    }
    let mut n = h % u64::from(slots.max(1));
    let mut digits = [0u8; 20];
    let mut d = digits.len();
    loop {
        d -= 1;
        if let Some(x) = digits.get_mut(d) {
            *x = b'0' + (n % 10) as u8;
        }
        n /= 10;
        if n == 0 || d == 0 {
            break;
        }
    }
    let mut name = SlotName {
        buf: [0; 48],
        len: 0,
    };
    for part in [
        b"mcp_ratelimit.".as_slice(),
        kind.as_bytes(),
        b".",
        digits.get(d..).unwrap_or_default(),
    ] {
        let end = (name.len + part.len()).min(name.buf.len());
        if let Some(dst) = name.buf.get_mut(name.len..end) {
            dst.copy_from_slice(part.get(..end - name.len).unwrap_or_default());
        }
        name.len = end;
    }
    name
}

// -- Encoding -----------------------------------------------------------------

struct Writer(Vec<u8>);

impl Writer {
    fn u64(&mut self, v: u64) -> &mut Self {
        self.0.extend_from_slice(&v.to_le_bytes());
        self
    }
    fn bytes(&mut self, b: &[u8]) -> &mut Self {
        let len = u32::try_from(b.len()).unwrap_or(u32::MAX);
        self.0.extend_from_slice(&len.to_le_bytes());
        self.0
            .extend_from_slice(b.get(..len as usize).unwrap_or_default());
        self
    }
}

struct Reader<'a>(&'a [u8]);

impl<'a> Reader<'a> {
    fn take(&mut self, n: usize) -> Option<&'a [u8]> {
        if self.0.len() < n {
            return None;
        }
        let (head, rest) = self.0.split_at(n);
        self.0 = rest;
        Some(head)
    }
    fn u64(&mut self) -> Option<u64> {
        Some(u64::from_le_bytes(self.take(8)?.try_into().ok()?))
    }
    fn bytes(&mut self) -> Option<&'a [u8]> {
        let len = u32::from_le_bytes(self.take(4)?.try_into().ok()?);
        self.take(len as usize)
    }
}

// -- Over-limit cache -----------------------------------------------------------

/// A denial the service gave, as stored.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Denial {
    /// Until when it is repeated without asking (ms).
    pub deny_until: u64,
    /// When the service's window resets, as far as it is known to have not
    /// reset yet (ms): after `deny_until` and before this, one request at a
    /// time asks again while the others are still denied.
    pub window_until: u64,
    /// When the service said it resets, counted from its answer (ms): the
    /// Retry-After of a repeat.
    pub reset_at: u64,
    /// One request is asking again until then (ms); 0: none.
    pub probe_until: u64,
    /// The denial's response headers.
    pub headers: Vec<(String, String)>,
}

const DENIAL: u8 = 1;

impl Denial {
    fn encode(&self, key: &[u8]) -> Vec<u8> {
        let mut w = Writer(Vec::with_capacity(64 + key.len()));
        w.0.push(DENIAL);
        w.u64(self.deny_until)
            .u64(self.window_until)
            .u64(self.reset_at)
            .u64(self.probe_until)
            .bytes(key);
        w.u64(self.headers.len() as u64);
        for (k, v) in &self.headers {
            w.bytes(k.as_bytes()).bytes(v.as_bytes());
        }
        w.0
    }

    /// The denial stored for `key`, if the slot holds one.
    fn decode(value: &[u8], key: &[u8]) -> Option<Denial> {
        let (&kind, rest) = value.split_first()?;
        if kind != DENIAL {
            return None;
        }
        let mut r = Reader(rest);
        let (deny_until, window_until, reset_at, probe_until) =
            (r.u64()?, r.u64()?, r.u64()?, r.u64()?);
        if r.bytes()? != key {
            return None;
        }
        let n = r.u64()?;
        let mut headers = Vec::new();
        for _ in 0..n.min(64) {
            let k = String::from_utf8(r.bytes()?.to_vec()).ok()?;
            let v = String::from_utf8(r.bytes()?.to_vec()).ok()?;
            headers.push((k, v));
        }
        Some(Denial {
            deny_until,
            window_until,
            reset_at,
            probe_until,
            headers,
        })
    }

    /// The response headers of a repeat at `now`: the stored ones, with
    /// the seconds to the reset brought up to date.
    pub fn headers_at(&self, now: u64) -> Vec<(String, String)> {
        let (secs, _) = retry_after(self.reset_at, now);
        self.headers
            .iter()
            .map(|(k, v)| {
                if k == "x-ratelimit-reset" || k == "ratelimit-reset" {
                    (k.clone(), secs.to_string())
                } else {
                    (k.clone(), v.clone())
                }
            })
            .collect()
    }
}

/// Retry-After for a reset at `reset_at` seen at `now`: whole seconds
/// (at least 1) and milliseconds (at least 1), rounded up.
pub fn retry_after(reset_at: u64, now: u64) -> (u64, u64) {
    let ms = reset_at.saturating_sub(now).max(1);
    (ms.div_ceil(1000).max(1), ms)
}

/// What the cache says of a descriptor.
#[derive(Debug, PartialEq, Eq)]
pub enum Cached {
    /// Not known to be over its limit: ask the service.
    Ask,
    /// Ask the service, as the one request that checks whether a denial
    /// still holds; the others are denied meanwhile.
    Probe,
    /// Deny as the service did.
    Deny(Denial),
}

/// Looks `key` up at `now`; a request that finds a denial past its
/// `deny_until` but within its window becomes the probe, if no other is.
pub fn lookup(store: &dyn Shared, slots: u32, key: &[u8], now: u64, probe_ms: u64) -> Cached {
    let name = slot("deny", key, slots);
    let Some((value, cas)) = store.shared_get(&name) else {
        return Cached::Ask;
    };
    let Some(mut d) = Denial::decode(&value, key) else {
        return Cached::Ask;
    };
    if now < d.deny_until {
        return Cached::Deny(d);
    }
    if now >= d.window_until {
        return Cached::Ask;
    }
    if now < d.probe_until {
        return Cached::Deny(d);
    }
    d.probe_until = now.saturating_add(probe_ms);
    if store.shared_set(&name, &d.encode(key), cas) {
        Cached::Probe
    } else {
        // Another request became the probe first.
        Cached::Deny(d)
    }
}

/// What a denial from the service says of one descriptor.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Reset {
    /// The service's `duration_until_reset`, in ms (rounded up).
    pub ms: u64,
    /// Whether it was whole seconds: envoyproxy/ratelimit truncates the
    /// time it measures from, so the window may end up to a second sooner.
    pub whole_seconds: bool,
}

impl Reset {
    /// The earliest the window can reset, for a call that left at `asked`.
    fn earliest(self, asked: u64) -> u64 {
        let margin = if self.whole_seconds { 1000 } else { 0 };
        asked.saturating_add(self.ms.saturating_sub(margin))
    }
}

/// Stores the service's denial of `key` (asked at `asked`, answered at
/// `now`): repeated until `min(earliest reset, now + max_ms)`.
#[allow(clippy::too_many_arguments)]
pub fn store_denial(
    store: &dyn Shared,
    slots: u32,
    key: &[u8],
    reset: Reset,
    asked: u64,
    now: u64,
    max_ms: u64,
    headers: &[(String, String)],
) {
    if key.len() > MAX_KEY {
        return;
    }
    let window_until = reset.earliest(asked);
    let denial = Denial {
        deny_until: window_until.min(now.saturating_add(max_ms)),
        window_until,
        // The latest the window can reset: a repeat's Retry-After is
        // never sooner than the service's would be.
        reset_at: now.saturating_add(reset.ms),
        probe_until: 0,
        headers: headers.to_vec(),
    };
    if denial.deny_until <= now {
        return;
    }
    store.shared_set(&slot("deny", key, slots), &denial.encode(key), 0);
}

/// The probe found the limit no longer exceeded: forget the denial.
pub fn forget_denial(store: &dyn Shared, slots: u32, key: &[u8]) {
    let name = slot("deny", key, slots);
    if let Some((value, cas)) = store.shared_get(&name) {
        if Denial::decode(&value, key).is_some() {
            store.shared_set(&name, &[], cas);
        }
    }
}

// -- Leases -----------------------------------------------------------------------

/// Hits leased from the service for one descriptor, shared by the workers.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
struct Lease {
    /// Hits left to spend.
    remaining: u64,
    /// Until when they may be spent (ms): before the window they were
    /// counted in can have ended.
    valid_until: u64,
    /// A request is asking for more until then (ms); 0: none.
    refill_until: u64,
    /// The service refused a lease: one hit per request until then (ms).
    refused_until: u64,
}

const LEASE: u8 = 2;

impl Lease {
    fn encode(&self, key: &[u8]) -> Vec<u8> {
        let mut w = Writer(Vec::with_capacity(48 + key.len()));
        w.0.push(LEASE);
        w.u64(self.remaining)
            .u64(self.valid_until)
            .u64(self.refill_until)
            .u64(self.refused_until)
            .bytes(key);
        w.0
    }

    fn decode(value: &[u8], key: &[u8]) -> Option<Lease> {
        let (&kind, rest) = value.split_first()?;
        if kind != LEASE {
            return None;
        }
        let mut r = Reader(rest);
        let lease = Lease {
            remaining: r.u64()?,
            valid_until: r.u64()?,
            refill_until: r.u64()?,
            refused_until: r.u64()?,
        };
        (r.bytes()? == key).then_some(lease)
    }
}

/// How a request uses a leased descriptor.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Use {
    /// Its hits were spent from the lease: nothing to ask.
    Spent,
    /// Its hits were spent from the lease, and the request asks for the
    /// next lease on the side: the answer cannot deny it.
    SpentAndRefill,
    /// The lease could not pay: the request asks for a new lease, its own
    /// hits included.
    Refill,
    /// Asked like any descriptor (its own hits).
    Plain,
}

/// Reads the lease of `key` (none: empty), lets `change` decide, and
/// writes what it returns back with compare-and-swap, retrying from a fresh
/// read when another writer came first; gives up (`None`) after
/// [`CAS_ATTEMPTS`], or when `change` returns nothing to write.
fn update<T>(
    store: &dyn Shared,
    slots: u32,
    key: &[u8],
    change: &dyn Fn(&mut Lease) -> Option<T>,
) -> Option<T> {
    let name = slot("lease", key, slots);
    for _ in 0..CAS_ATTEMPTS {
        let (mut lease, cas) = match store.shared_get(&name) {
            Some((value, cas)) => (Lease::decode(&value, key).unwrap_or_default(), cas),
            None => (Lease::default(), 0),
        };
        let out = change(&mut lease)?;
        if store.shared_set(&name, &lease.encode(key), cas) {
            return Some(out);
        }
    }
    None
}

/// Spends `hits` of the lease of `key` if it can, and decides whether this
/// request asks for the next `size` hits: when the lease is empty, or half
/// spent, and no other request is asking.
pub fn take(
    store: &dyn Shared,
    slots: u32,
    key: &[u8],
    hits: u64,
    size: u64,
    now: u64,
    refill_ms: u64,
) -> Use {
    if hits >= size || key.len() > MAX_KEY {
        return Use::Plain;
    }
    let change = |lease: &mut Lease| {
        let valid = now < lease.valid_until;
        let spent = valid && lease.remaining >= hits;
        if spent {
            lease.remaining -= hits;
        }
        // After a refusal, what is left is still spent, but not renewed.
        let low = !valid || lease.remaining <= size / 2;
        let refill = low && now >= lease.refill_until && now >= lease.refused_until;
        if refill {
            lease.refill_until = now.saturating_add(refill_ms);
        }
        match (spent, refill) {
            (true, false) => Some(Use::Spent),
            (true, true) => Some(Use::SpentAndRefill),
            (false, true) => Some(Use::Refill),
            // Another request is renewing the lease: ask as usual.
            (false, false) => None,
        }
    };
    update(store, slots, key, &change).unwrap_or(Use::Plain)
}

/// The service granted a lease of `size` hits for `key`, asked at `asked`,
/// of which the request itself spends `own`: added to what is left when it
/// is of the same window, else in its place. Hits it could not keep are
/// only ever lost (fewer admitted), never spent twice.
#[allow(clippy::too_many_arguments)]
pub fn grant(
    store: &dyn Shared,
    slots: u32,
    key: &[u8],
    size: u64,
    own: u64,
    reset: Reset,
    asked: u64,
    now: u64,
) {
    let valid_until = reset.earliest(asked);
    let change = |lease: &mut Lease| {
        let same_window = now < lease.valid_until && lease.valid_until.abs_diff(valid_until) < 2000;
        if same_window {
            lease.valid_until = lease.valid_until.min(valid_until);
            lease.remaining = lease.remaining.saturating_add(size.saturating_sub(own));
        } else {
            lease.valid_until = valid_until;
            lease.remaining = size.saturating_sub(own);
        }
        lease.refill_until = 0;
        if valid_until <= now {
            // Too close to the reset to spend: dropped.
            lease.remaining = 0;
        }
        Some(())
    };
    update(store, slots, key, &change);
}

/// The service refused a lease for `key`: one hit per request until the
/// window resets (`reset`), or for a second when it gave no reset.
pub fn refused(
    store: &dyn Shared,
    slots: u32,
    key: &[u8],
    reset: Option<Reset>,
    asked: u64,
    now: u64,
) {
    let until = reset.map_or(now.saturating_add(1000), |r| asked.saturating_add(r.ms));
    let change = |lease: &mut Lease| {
        lease.refused_until = until;
        lease.refill_until = 0;
        Some(())
    };
    update(store, slots, key, &change);
}

/// The call that was to renew the lease of `key` failed: let another
/// request try.
pub fn refill_failed(store: &dyn Shared, slots: u32, key: &[u8]) {
    let change = |lease: &mut Lease| {
        lease.refill_until = 0;
        Some(())
    };
    update(store, slots, key, &change);
}

#[cfg(test)]
mod tests;
