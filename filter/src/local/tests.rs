use std::cell::{Cell, RefCell};
use std::collections::HashMap;

use super::*;

/// Shared data like Envoy's: a token per key, bumped on every write; a set
/// with token 0 always writes.
#[derive(Default)]
struct Store {
    data: RefCell<HashMap<String, (Vec<u8>, u32)>>,
    next: Cell<u32>,
    now: Cell<u64>,
    /// Writes to fail as if another worker came first.
    lose: Cell<usize>,
}

impl Shared for Store {
    fn shared_get(&self, key: &str) -> Option<(Vec<u8>, u32)> {
        self.data.borrow().get(key).cloned()
    }
    fn shared_set(&self, key: &str, value: &[u8], cas: u32) -> bool {
        if self.lose.get() > 0 {
            self.lose.set(self.lose.get() - 1);
            self.next.set(self.next.get() + 1);
            let mut d = self.data.borrow_mut();
            if let Some(e) = d.get_mut(key) {
                e.1 = self.next.get();
            }
            return false;
        }
        let mut d = self.data.borrow_mut();
        let current = d.get(key).map(|e| e.1);
        if cas != 0 && current != Some(cas) {
            return false;
        }
        self.next.set(self.next.get() + 1);
        d.insert(key.to_owned(), (value.to_vec(), self.next.get()));
        true
    }
    fn now_ms(&self) -> u64 {
        self.now.get()
    }
}

const SEC: Reset = Reset {
    ms: 30_000,
    whole_seconds: true,
};

fn headers() -> Vec<(String, String)> {
    vec![
        ("ratelimit-limit".into(), "3".into()),
        ("ratelimit-reset".into(), "30".into()),
    ]
}

#[test]
fn a_denial_is_repeated_until_the_cap_then_probed_by_one_request() {
    let s = Store::default();
    assert_eq!(lookup(&s, 8, b"k", 1000, 100), Cached::Ask);
    // Asked at 1000, answered at 1002: window resets at 31000 (whole
    // seconds: at the earliest 30000), repeated for 1000 ms.
    store_denial(&s, 8, b"k", SEC, 1000, 1002, 1000, &headers());
    let Cached::Deny(d) = lookup(&s, 8, b"k", 1500, 100) else {
        panic!("not denied")
    };
    assert_eq!(
        (d.deny_until, d.window_until, d.reset_at),
        (2002, 30000, 31002)
    );
    assert_eq!(retry_after(d.reset_at, 1502), (30, 29500));
    assert_eq!(
        d.headers_at(1500),
        vec![
            ("ratelimit-limit".to_owned(), "3".to_owned()),
            ("ratelimit-reset".to_owned(), "30".to_owned())
        ]
    );
    assert_eq!(d.headers_at(29_001)[1].1, "3");
    // Past the cap, within the window: one probe, the others still denied.
    assert_eq!(lookup(&s, 8, b"k", 2002, 100), Cached::Probe);
    assert!(matches!(lookup(&s, 8, b"k", 2003, 100), Cached::Deny(_)));
    assert!(matches!(lookup(&s, 8, b"k", 2101, 100), Cached::Deny(_)));
    // The probe's answer never came: another request probes.
    assert_eq!(lookup(&s, 8, b"k", 2102, 100), Cached::Probe);
    // The probe found the limit lifted.
    forget_denial(&s, 8, b"k");
    assert_eq!(lookup(&s, 8, b"k", 2102, 100), Cached::Ask);
}

#[test]
fn a_denial_ends_with_its_window() {
    let s = Store::default();
    // Reset in 500 ms, exact: never repeated past 1500.
    let r = Reset {
        ms: 500,
        whole_seconds: false,
    };
    store_denial(&s, 8, b"k", r, 1000, 1001, 1000, &[]);
    assert!(matches!(lookup(&s, 8, b"k", 1499, 100), Cached::Deny(_)));
    assert_eq!(lookup(&s, 8, b"k", 1500, 100), Cached::Ask);
    // Whole seconds with one second left: the window may already be over.
    let s = Store::default();
    let r = Reset {
        ms: 1000,
        whole_seconds: true,
    };
    store_denial(&s, 8, b"k", r, 1000, 1001, 1000, &[]);
    assert_eq!(lookup(&s, 8, b"k", 1001, 100), Cached::Ask);
}

#[test]
fn slots_are_bounded_and_a_collision_only_evicts() {
    let s = Store::default();
    for i in 0..1000u32 {
        store_denial(&s, 4, &i.to_le_bytes(), SEC, 0, 0, 1000, &[]);
    }
    assert!(s.data.borrow().len() <= 4);
    // With one slot, a descriptor never reads another's denial.
    let s = Store::default();
    store_denial(&s, 1, b"alice", SEC, 0, 0, 1000, &[]);
    assert_eq!(lookup(&s, 1, b"bob", 10, 100), Cached::Ask);
    assert!(matches!(lookup(&s, 1, b"alice", 10, 100), Cached::Deny(_)));
    // Too long a key is not stored.
    let long = vec![b'x'; MAX_KEY + 1];
    store_denial(&s, 1, &long, SEC, 0, 0, 1000, &[]);
    assert_eq!(lookup(&s, 1, &long, 10, 100), Cached::Ask);
}

#[test]
fn a_lease_is_spent_locally_and_renewed_by_one_request_at_half() {
    let s = Store::default();
    let t = 1000;
    assert_eq!(take(&s, 8, b"k", 1, 10, t, 100), Use::Refill);
    // Another request while the first asks: on its own.
    assert_eq!(take(&s, 8, b"k", 1, 10, t, 100), Use::Plain);
    grant(&s, 8, b"k", 10, 1, SEC, t, t + 1);
    // 9 left: spent down to 6 without asking; the request that leaves 5
    // asks for more.
    for _ in 0..3 {
        assert_eq!(take(&s, 8, b"k", 1, 10, t + 2, 100), Use::Spent);
    }
    assert_eq!(take(&s, 8, b"k", 1, 10, t + 2, 100), Use::SpentAndRefill);
    for _ in 0..5 {
        assert_eq!(take(&s, 8, b"k", 1, 10, t + 3, 100), Use::Spent);
    }
    // Empty, renewal in flight: ask as usual.
    assert_eq!(take(&s, 8, b"k", 1, 10, t + 3, 100), Use::Plain);
    // The renewal lands: 10 more.
    grant(&s, 8, b"k", 10, 0, SEC, t + 2, t + 4);
    assert_eq!(take(&s, 8, b"k", 3, 10, t + 5, 100), Use::Spent);
    // A request costing the whole lease or more is asked as it is.
    assert_eq!(take(&s, 8, b"k", 10, 10, t + 5, 100), Use::Plain);
}

#[test]
fn a_lease_is_never_spent_past_its_window() {
    let s = Store::default();
    assert_eq!(take(&s, 8, b"k", 1, 10, 0, 100), Use::Refill);
    // Whole seconds: 30 s reported, at most 29 s spent.
    grant(&s, 8, b"k", 10, 1, SEC, 0, 5);
    assert_eq!(take(&s, 8, b"k", 1, 10, 28_999, 100), Use::Spent);
    assert_eq!(take(&s, 8, b"k", 1, 10, 29_000, 100), Use::Refill);
    // The next window's lease replaces what was left.
    grant(&s, 8, b"k", 10, 1, SEC, 29_000, 29_001);
    let mut spent = 0;
    while matches!(
        take(&s, 8, b"k", 1, 10, 29_002, 100_000),
        Use::Spent | Use::SpentAndRefill
    ) {
        spent += 1;
    }
    assert_eq!(spent, 9);
    // A reset too close to spend anything: dropped.
    let s = Store::default();
    take(&s, 8, b"k", 1, 10, 0, 100);
    let r = Reset {
        ms: 1000,
        whole_seconds: true,
    };
    grant(&s, 8, b"k", 10, 1, r, 0, 1);
    assert_eq!(take(&s, 8, b"k", 1, 10, 2, 100), Use::Refill);
}

#[test]
fn a_refused_lease_falls_back_to_one_hit_per_request_until_the_reset() {
    let s = Store::default();
    assert_eq!(take(&s, 8, b"k", 1, 10, 0, 100), Use::Refill);
    refused(&s, 8, b"k", Some(SEC), 0, 1);
    assert_eq!(take(&s, 8, b"k", 1, 10, 29_999, 100), Use::Plain);
    assert_eq!(take(&s, 8, b"k", 1, 10, 30_000, 100), Use::Refill);
    // A failed renewal lets the next request try at once.
    refill_failed(&s, 8, b"k");
    assert_eq!(take(&s, 8, b"k", 1, 10, 30_001, 100), Use::Refill);
}

#[test]
fn compare_and_swap_losers_retry_and_never_spend_twice() {
    let s = Store::default();
    take(&s, 8, b"k", 1, 100, 0, 10);
    grant(&s, 8, b"k", 100, 0, SEC, 0, 1);
    s.lose.set(2);
    assert_eq!(take(&s, 8, b"k", 1, 100, 2, 10), Use::Spent);
    s.lose.set(CAS_ATTEMPTS);
    assert_eq!(take(&s, 8, b"k", 1, 100, 2, 10), Use::Plain);
    let left = Lease::decode(&s.data.borrow()[&*slot("lease", b"k", 8)].0, b"k").unwrap();
    assert_eq!(left.remaining, 99);
}

/// Workers of several Envoys take from their process's lease in a random
/// interleaving, against a model of the service that counts every hit
/// asked (a refused lease included, as envoyproxy/ratelimit does): within
/// each window, the hits admitted never exceed the limit.
#[test]
fn leases_never_admit_more_than_the_limit() {
    let limit = 1000u64;
    let size = 37u64;
    let mut seed = 0x2545_f491_4f6c_dd1du64;
    let mut rand = move |n: u64| {
        seed ^= seed << 13;
        seed ^= seed >> 7;
        seed ^= seed << 17;
        seed % n
    };
    let envoys: Vec<Store> = (0..3).map(|_| Store::default()).collect();
    let mut counted = 0u64; // the service's counter, this window
    let mut admitted = 0u64;
    let window_end = 60_000u64;
    let mut now = 0u64;
    let mut pending: Vec<(usize, u64, u64, bool, u64)> = Vec::new(); // envoy, ask, own, spent, asked
    while now < window_end + 5_000 {
        now += rand(3);
        let e = rand(3) as usize;
        let store = &envoys[e];
        let hits = 1 + rand(2);
        if rand(4) == 0 && !pending.is_empty() {
            // A reply arrives.
            let (e, ask, own, spent, asked) =
                pending.swap_remove(rand(pending.len() as u64) as usize);
            let store = &envoys[e];
            let in_window = asked < window_end;
            let reset = Reset {
                ms: window_end.saturating_sub(asked).max(1),
                whole_seconds: false,
            };
            if in_window && counted + ask <= limit {
                counted += ask;
                if !spent {
                    admitted += own;
                }
                if ask > own || spent {
                    grant(
                        store,
                        8,
                        b"k",
                        ask,
                        if spent { 0 } else { own },
                        reset,
                        asked,
                        now,
                    );
                }
            } else {
                counted += ask;
                if ask != own || spent {
                    refused(store, 8, b"k", Some(reset), asked, now);
                }
            }
            continue;
        }
        match take(store, 8, b"k", hits, size, now, 50) {
            Use::Spent => admitted += hits * u64::from(now < window_end),
            Use::SpentAndRefill => {
                admitted += hits * u64::from(now < window_end);
                pending.push((e, size, hits, true, now));
            }
            Use::Refill => pending.push((e, size, hits, false, now)),
            Use::Plain => pending.push((e, hits, hits, false, now)),
        }
    }
    assert!(admitted <= limit, "admitted {admitted} of {limit}");
    assert!(admitted > limit / 2, "admitted only {admitted} of {limit}");
}

#[test]
fn slot_names_are_the_kind_and_a_number_below_the_slots() {
    assert_eq!(&*slot("deny", b"", 1), "mcp_ratelimit.deny.0");
    let mut seen = std::collections::HashSet::new();
    for i in 0..5000u32 {
        let name = slot("lease", &i.to_le_bytes(), 1000);
        let n: u64 = name
            .strip_prefix("mcp_ratelimit.lease.")
            .unwrap()
            .parse()
            .unwrap();
        assert!(n < 1000);
        seen.insert(n);
    }
    assert!(seen.len() > 900, "{} slots used", seen.len());
    assert_eq!(
        &*slot("deny", b"x", 65_536).split('.').count().to_string(),
        "3"
    );
}
