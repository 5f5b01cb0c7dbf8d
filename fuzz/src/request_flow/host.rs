//! The host as the flow sees it: the request's headers and metadata, and
//! the counters the flow moves.

use std::cell::RefCell;
use std::collections::HashMap;

use mcp_ratelimit::flow::{Counter, Host};

use super::request::Request;

pub struct FuzzHost<'r> {
    req: &'r Request,
    counts: RefCell<HashMap<Counter, u64>>,
}

impl<'r> FuzzHost<'r> {
    pub fn new(req: &'r Request) -> Self {
        FuzzHost {
            req,
            counts: RefCell::new(HashMap::new()),
        }
    }

    pub fn count_of(&self, c: Counter) -> u64 {
        self.counts.borrow().get(&c).copied().unwrap_or(0)
    }

    /// Every counter that moved, in a fixed order.
    pub fn counts(&self) -> Vec<(Counter, u64)> {
        Counter::ALL
            .iter()
            .map(|c| (*c, self.count_of(*c)))
            .filter(|(_, n)| *n > 0)
            .collect()
    }

    pub fn nothing_counted(&self) -> bool {
        self.counts.borrow().is_empty()
    }
}

fn assert_lowercase(name: &str) {
    assert_eq!(
        name,
        name.to_ascii_lowercase(),
        "header names are lowercase"
    );
}

impl Host for FuzzHost<'_> {
    fn request_header(&self, name: &str) -> Option<Vec<u8>> {
        assert_lowercase(name);
        self.req.headers.get(name).cloned()
    }
    fn metadata(&self, namespace: &str, path: &[String]) -> Option<Vec<u8>> {
        if namespace == "jwt" && path == ["payload", "sub"] {
            self.req.metadata_sub.clone()
        } else {
            None
        }
    }
    fn count(&self, counter: Counter) {
        *self.counts.borrow_mut().entry(counter).or_default() += 1;
    }
    fn any_repeated(&self, names: &[String]) -> bool {
        names.iter().any(|n| {
            assert_lowercase(n);
            self.req.repeated.contains(&n.as_str())
        })
    }
}
