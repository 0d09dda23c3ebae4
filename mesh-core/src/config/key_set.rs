//! [`KeySet`]: the few keys an index entry holds (the rules naming one host, the policies in
//! one namespace), as a sorted vector sized to fit. A `BTreeSet` would allocate a ~600-byte
//! node for the usual one or two keys.

/// A sorted set of a few values; inserting and removing are linear, so keep it small.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct KeySet<T>(Vec<T>);

impl<T> Default for KeySet<T> {
    fn default() -> Self {
        KeySet(Vec::new())
    }
}

impl<T: Ord> KeySet<T> {
    /// Adds `value`; false if it was there already.
    pub(crate) fn insert(&mut self, value: T) -> bool {
        match self.0.binary_search(&value) {
            Ok(_) => false,
            Err(at) => {
                // Grow by one, not by doubling: these sets stay small and live long.
                self.0.reserve_exact(1);
                self.0.insert(at, value);
                true
            }
        }
    }

    /// Removes `value`; false if it was not there.
    pub(crate) fn remove(&mut self, value: &T) -> bool {
        match self.0.binary_search(value) {
            Ok(at) => {
                self.0.remove(at);
                self.0.shrink_to_fit();
                true
            }
            Err(_) => false,
        }
    }

    pub(crate) fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// The values in order.
    pub(crate) fn iter(&self) -> std::slice::Iter<'_, T> {
        self.0.iter()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keeps_values_sorted_and_once() {
        let mut set = KeySet::default();
        assert!(set.insert("b"));
        assert!(set.insert("a"));
        assert!(set.insert("c"));
        assert!(!set.insert("a"));
        assert_eq!(set.iter().copied().collect::<Vec<_>>(), ["a", "b", "c"]);
        assert!(set.remove(&"b"));
        assert!(!set.remove(&"b"));
        assert_eq!(set.iter().copied().collect::<Vec<_>>(), ["a", "c"]);
        assert!(set.remove(&"a") && set.remove(&"c") && set.is_empty());
    }
}
