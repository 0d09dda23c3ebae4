//! Labels and label selectors as the model keeps them ([`Labels`]: a shared sorted slice of
//! key/value pairs) and the [`Interner`] that lets equal strings, and equal label sets,
//! share one allocation. 50k pods with a handful of distinct keys and values then cost two
//! pointers per label, where a `BTreeMap<String, String>` took a ~544-byte node and a string
//! per key and value; and the pods of one Deployment, which carry the same labels, share
//! one set.

use std::collections::{BTreeMap, HashSet};
use std::fmt;
use std::sync::{Arc, LazyLock};

use serde::Serialize;
use serde::ser::SerializeMap;

/// A label set (or selector), sorted by key, one value per key.
#[derive(Clone, Default, PartialEq, Eq, Hash)]
pub struct Labels(Arc<[Label]>);

type Label = (Arc<str>, Arc<str>);

/// The empty label set, for lookups that have no object to borrow from.
pub static NO_LABELS: LazyLock<Labels> = LazyLock::new(Labels::default);

impl Labels {
    /// The labels from `pairs`, strings and the set itself shared through `strings`. A key
    /// given twice keeps its last value, as inserting into a map would.
    pub fn interned<'a>(
        pairs: impl IntoIterator<Item = (&'a str, &'a str)>,
        strings: &mut Interner,
    ) -> Labels {
        let pairs = pairs
            .into_iter()
            .map(|(k, v)| (strings.get(k), strings.get(v)))
            .collect();
        Labels(strings.sets.get(&sorted(pairs)))
    }

    pub fn get(&self, key: &str) -> Option<&str> {
        self.0
            .binary_search_by(|(k, _)| (**k).cmp(key))
            .ok()
            .map(|i| &*self.0[i].1)
    }

    pub fn iter(&self) -> impl ExactSizeIterator<Item = (&str, &str)> {
        self.0.iter().map(|(k, v)| (&**k, &**v))
    }

    pub fn len(&self) -> usize {
        self.0.len()
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// Whether these labels have every pair of `selector` (an empty selector selects all).
    pub fn contains_all<'a>(&self, selector: impl IntoIterator<Item = (&'a str, &'a str)>) -> bool {
        selector.into_iter().all(|(k, v)| self.get(k) == Some(v))
    }
}

/// Labels from owned or borrowed pairs, each string allocated anew (tests, one-off sets; the
/// store uses [`Labels::interned`]).
impl<K: AsRef<str>, V: AsRef<str>> FromIterator<(K, V)> for Labels {
    fn from_iter<I: IntoIterator<Item = (K, V)>>(pairs: I) -> Labels {
        let pairs = pairs
            .into_iter()
            .map(|(k, v)| (Arc::from(k.as_ref()), Arc::from(v.as_ref())))
            .collect();
        Labels(sorted(pairs).into())
    }
}

/// Sorted by key, a key given twice keeping its last value.
fn sorted(mut pairs: Vec<Label>) -> Vec<Label> {
    // Stable: among equal keys the last given stays last, and dedup keeps the first of a
    // run, so reverse the run order first.
    pairs.reverse();
    pairs.sort_by(|a, b| a.0.cmp(&b.0));
    pairs.dedup_by(|later, earlier| later.0 == earlier.0);
    pairs
}

impl From<&BTreeMap<String, String>> for Labels {
    fn from(map: &BTreeMap<String, String>) -> Labels {
        map.iter().collect()
    }
}

impl fmt::Debug for Labels {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_map().entries(self.iter()).finish()
    }
}

impl Serialize for Labels {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        let mut map = serializer.serialize_map(Some(self.len()))?;
        for (k, v) in self.iter() {
            map.serialize_entry(k, v)?;
        }
        map.end()
    }
}

/// Hands out one shared `Arc<str>` per distinct string, and one shared label set per
/// distinct set.
#[derive(Debug, Default)]
pub struct Interner {
    strings: Pool<str>,
    sets: Pool<[Label]>,
}

impl Interner {
    pub fn get(&mut self, s: &str) -> Arc<str> {
        self.strings.get(s)
    }

    /// How many distinct strings it holds.
    pub fn len(&self) -> usize {
        self.strings.values.len()
    }

    pub fn is_empty(&self) -> bool {
        self.strings.values.is_empty()
    }
}

/// One shared `Arc` per distinct value. Values nothing else holds any more are forgotten
/// once the pool has doubled since the last such sweep, so label values that come and go
/// (pod-template hashes) do not pile up; the sweep's cost is spread over the insertions
/// that doubled the pool.
#[derive(Debug)]
struct Pool<T: ?Sized> {
    values: HashSet<Arc<T>>,
    sweep_at: usize,
}

impl<T: ?Sized> Default for Pool<T> {
    fn default() -> Self {
        Pool {
            values: HashSet::new(),
            sweep_at: 0,
        }
    }
}

/// Below this many values a pool does not sweep.
const MIN_SWEEP: usize = 1024;

impl<T: ?Sized + Eq + std::hash::Hash> Pool<T>
where
    for<'a> Arc<T>: From<&'a T>,
{
    fn get(&mut self, value: &T) -> Arc<T> {
        if let Some(found) = self.values.get(value) {
            return found.clone();
        }
        if self.values.len() >= self.sweep_at {
            self.values.retain(|v| Arc::strong_count(v) > 1);
            self.sweep_at = (self.values.len() * 2).max(MIN_SWEEP);
        }
        let new = Arc::from(value);
        self.values.insert(new.clone());
        new
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lookups_find_every_pair_and_the_last_value_of_a_repeated_key_wins() {
        let labels: Labels = [("version", "v1"), ("app", "reviews"), ("version", "v2")]
            .into_iter()
            .collect();
        assert_eq!(labels.len(), 2);
        assert_eq!(labels.get("app"), Some("reviews"));
        assert_eq!(labels.get("version"), Some("v2"));
        assert_eq!(labels.get("tier"), None);
        assert_eq!(
            labels.iter().collect::<Vec<_>>(),
            [("app", "reviews"), ("version", "v2")]
        );
    }

    #[test]
    fn a_selector_needs_every_pair_and_an_empty_one_selects_all() {
        let labels: Labels = [("app", "reviews"), ("version", "v1")]
            .into_iter()
            .collect();
        assert!(labels.contains_all([("app", "reviews")]));
        assert!(labels.contains_all([("version", "v1"), ("app", "reviews")]));
        assert!(!labels.contains_all([("app", "reviews"), ("version", "v2")]));
        assert!(!labels.contains_all([("tier", "web")]));
        assert!(labels.contains_all([]));
        assert!(!NO_LABELS.contains_all([("app", "reviews")]));
    }

    #[test]
    fn serializes_and_prints_as_a_map() {
        let labels: Labels = [("b", "2"), ("a", "1")].into_iter().collect();
        assert_eq!(
            serde_json::to_value(&labels).unwrap(),
            serde_json::json!({"a": "1", "b": "2"})
        );
        assert_eq!(format!("{labels:?}"), r#"{"a": "1", "b": "2"}"#);
    }

    #[test]
    fn interned_labels_share_their_strings_and_equal_sets_share_one_slice() {
        let mut strings = Interner::default();
        let a = Labels::interned([("app", "reviews"), ("version", "v1")], &mut strings);
        let b = Labels::interned([("version", "v1"), ("app", "reviews")], &mut strings);
        let c = Labels::interned([("app", "reviews")], &mut strings);
        assert_eq!(a, b);
        assert!(Arc::ptr_eq(&a.0, &b.0));
        assert!(!Arc::ptr_eq(&a.0, &c.0));
        assert!(Arc::ptr_eq(&a.0[0].0, &c.0[0].0));
        assert!(Arc::ptr_eq(&a.0[0].1, &c.0[0].1));
        assert_eq!(strings.len(), 4);
    }

    #[test]
    fn strings_nothing_holds_are_swept_once_the_set_doubles() {
        let mut strings = Interner::default();
        let kept = strings.get("kept");
        for i in 0..MIN_SWEEP * 3 {
            strings.get(&format!("gone-{i}"));
        }
        // Every sweep left only "kept" (and the strings since): the set never grows past
        // twice what is held.
        assert!(strings.len() <= MIN_SWEEP + 1, "{}", strings.len());
        assert!(Arc::ptr_eq(&kept, &strings.get("kept")));
    }
}
