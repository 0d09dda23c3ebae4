//! [`KeySet`]: the keys an index entry holds (the rules naming one host, the policies in one
//! namespace, the pods a service selects), as a sorted vector sized to fit. A `BTreeSet`
//! would allocate a ~200 to ~600-byte node for the usual handful of keys.

/// A sorted set of values; inserting and removing are linear (a move of the values after
/// the place), which is cheap for the hundreds of pods even a large service selects.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct KeySet<T>(Vec<T>);

impl<T> Default for KeySet<T> {
    fn default() -> Self {
        KeySet(Vec::new())
    }
}

/// The set of the values given, in any order, once each.
impl<T: Ord> From<Vec<T>> for KeySet<T> {
    fn from(mut values: Vec<T>) -> KeySet<T> {
        values.sort();
        values.dedup();
        values.shrink_to_fit();
        KeySet(values)
    }
}

impl<T: Ord> FromIterator<T> for KeySet<T> {
    fn from_iter<I: IntoIterator<Item = T>>(values: I) -> KeySet<T> {
        KeySet::from(values.into_iter().collect::<Vec<T>>())
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

    pub(crate) fn contains(&self, value: &T) -> bool {
        self.0.binary_search(value).is_ok()
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
        assert!(set.contains(&"a") && !set.contains(&"b"));
        assert!(set.remove(&"a") && set.remove(&"c") && set.is_empty());
        let built: KeySet<_> = ["c", "a", "c", "b"].into_iter().collect();
        assert_eq!(built.iter().copied().collect::<Vec<_>>(), ["a", "b", "c"]);
    }
}
