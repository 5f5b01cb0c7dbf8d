//! A map from context ids (or call tokens) to values: a vector sorted by
//! id. Envoy hands out ids in increasing order, so an insertion is a push,
//! and a lookup is a binary search. It replaces `BTreeMap`, whose code is
//! several times larger in the module.

/// Values by `u32` id, in id order.
pub(crate) struct IdMap<V>(Vec<(u32, V)>);

impl<V> IdMap<V> {
    pub(crate) const fn new() -> Self {
        IdMap(Vec::new())
    }

    fn find(&self, id: u32) -> Result<usize, usize> {
        match self.0.last() {
            Some((last, _)) if *last < id => Err(self.0.len()),
            _ => self.0.binary_search_by_key(&id, |(k, _)| *k),
        }
    }

    /// Sets the value of `id`; the one it replaces, if any.
    pub(crate) fn insert(&mut self, id: u32, value: V) -> Option<V> {
        match self.find(id) {
            Ok(i) => self
                .0
                .get_mut(i)
                .map(|slot| std::mem::replace(&mut slot.1, value)),
            Err(i) => {
                self.0.insert(i, (id, value));
                None
            }
        }
    }

    pub(crate) fn remove(&mut self, id: &u32) -> Option<V> {
        let i = self.find(*id).ok()?;
        Some(self.0.remove(i).1)
    }

    pub(crate) fn get_mut(&mut self, id: &u32) -> Option<&mut V> {
        let i = self.find(*id).ok()?;
        self.0.get_mut(i).map(|(_, v)| v)
    }

    pub(crate) fn contains_key(&self, id: &u32) -> bool {
        self.find(*id).is_ok()
    }

    /// The value of `id`, made by `make` when there is none (always
    /// `Some`).
    pub(crate) fn get_or_insert_with(
        &mut self,
        id: u32,
        make: impl FnOnce() -> V,
    ) -> Option<&mut V> {
        if let Err(i) = self.find(id) {
            self.0.insert(i, (id, make()));
        }
        self.get_mut(&id)
    }

    pub(crate) fn retain(&mut self, mut keep: impl FnMut(&u32, &mut V) -> bool) {
        self.0.retain_mut(|(k, v)| keep(k, v));
    }

    #[cfg(test)]
    pub(crate) fn len(&self) -> usize {
        self.0.len()
    }
}

#[cfg(test)]
mod tests {
    use super::IdMap;
    use std::collections::BTreeMap;

    #[test]
    fn behaves_as_a_btree_map() {
        let mut m = IdMap::new();
        let mut b = BTreeMap::new();
        let mut x: u32 = 7;
        for step in 0..5000u32 {
            x = x.wrapping_mul(1_103_515_245).wrapping_add(12_345);
            let id = (x >> 8) % 64;
            match x % 5 {
                0 | 1 => assert_eq!(m.insert(id, step), b.insert(id, step)),
                2 => assert_eq!(m.remove(&id), b.remove(&id)),
                3 => assert_eq!(m.get_mut(&id).copied(), b.get_mut(&id).copied()),
                _ => {
                    assert_eq!(
                        m.get_or_insert_with(id, || step).copied(),
                        Some(*b.entry(id).or_insert(step))
                    );
                    m.retain(|_, v| *v % 7 != 0);
                    b.retain(|_, v| *v % 7 != 0);
                }
            }
            assert_eq!(m.contains_key(&id), b.contains_key(&id));
            assert_eq!(m.len(), b.len());
            assert!(m.0.iter().map(|(k, _)| *k).eq(b.keys().copied()));
        }
    }
}
