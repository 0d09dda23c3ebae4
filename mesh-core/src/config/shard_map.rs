//! A hash map that is cheap to snapshot and cheap to change after a snapshot: the entries
//! live in a fixed number of `Arc`ed shards, a clone copies only the shard pointers, and a
//! write copies only the one shard it touches (when a reader still holds it). This is how the
//! one writer publishes a fresh [`super::Model`] after every update without copying 50k pods.

use std::borrow::Borrow;
use std::collections::HashMap;
use std::hash::{BuildHasher, BuildHasherDefault, DefaultHasher, Hash};
use std::sync::Arc;

/// 128 shards: at 50k entries a write copies ~400 of them at most.
const SHARDS: usize = 128;

#[derive(Debug)]
pub(crate) struct ShardMap<K, V> {
    shards: Vec<Arc<HashMap<K, V>>>,
    len: usize,
}

impl<K, V> Clone for ShardMap<K, V> {
    fn clone(&self) -> Self {
        ShardMap {
            shards: self.shards.clone(),
            len: self.len,
        }
    }
}

impl<K, V> Default for ShardMap<K, V> {
    fn default() -> Self {
        ShardMap {
            shards: (0..SHARDS).map(|_| Arc::new(HashMap::new())).collect(),
            len: 0,
        }
    }
}

fn shard_of<Q: Hash + ?Sized>(key: &Q) -> usize {
    // A fixed hasher: the shard of a key must not change between clones.
    let hash = BuildHasherDefault::<DefaultHasher>::default().hash_one(key);
    (hash % SHARDS as u64) as usize
}

impl<K: Hash + Eq + Clone, V: Clone> ShardMap<K, V> {
    pub(crate) fn get<Q>(&self, key: &Q) -> Option<&V>
    where
        K: Borrow<Q>,
        Q: Hash + Eq + ?Sized,
    {
        self.shards[shard_of(key)].get(key)
    }

    /// Mutable access; copies the shard first if a snapshot still shares it.
    pub(crate) fn get_mut<Q>(&mut self, key: &Q) -> Option<&mut V>
    where
        K: Borrow<Q>,
        Q: Hash + Eq + ?Sized,
    {
        let shard = &mut self.shards[shard_of(key)];
        if !shard.contains_key(key) {
            return None;
        }
        Arc::make_mut(shard).get_mut(key)
    }

    pub(crate) fn insert(&mut self, key: K, value: V) -> Option<V> {
        let old = Arc::make_mut(&mut self.shards[shard_of(&key)]).insert(key, value);
        if old.is_none() {
            self.len += 1;
        }
        old
    }

    pub(crate) fn remove<Q>(&mut self, key: &Q) -> Option<V>
    where
        K: Borrow<Q>,
        Q: Hash + Eq + ?Sized,
    {
        let shard = &mut self.shards[shard_of(key)];
        if !shard.contains_key(key) {
            return None;
        }
        let old = Arc::make_mut(shard).remove(key);
        if old.is_some() {
            self.len -= 1;
        }
        old
    }

    /// The value for `key`, inserting `V::default()` first if there is none.
    pub(crate) fn get_or_default(&mut self, key: K) -> &mut V
    where
        V: Default,
    {
        let shard = Arc::make_mut(&mut self.shards[shard_of(&key)]);
        let mut inserted = false;
        let value = shard.entry(key).or_insert_with(|| {
            inserted = true;
            V::default()
        });
        if inserted {
            self.len += 1;
        }
        value
    }

    pub(crate) fn len(&self) -> usize {
        self.len
    }

    pub(crate) fn iter(&self) -> impl Iterator<Item = (&K, &V)> {
        self.shards.iter().flat_map(|shard| shard.iter())
    }

    pub(crate) fn values(&self) -> impl Iterator<Item = &V> {
        self.iter().map(|(_, v)| v)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn clone_is_a_snapshot_that_later_writes_do_not_change() {
        let mut map = ShardMap::default();
        for i in 0..1000 {
            map.insert(i, i * 2);
        }
        let snapshot = map.clone();
        map.insert(7, 0);
        map.remove(&8);
        *map.get_mut(&9).unwrap() = 1;
        assert_eq!(snapshot.get(&7), Some(&14));
        assert_eq!(snapshot.get(&8), Some(&16));
        assert_eq!(snapshot.get(&9), Some(&18));
        assert_eq!(map.get(&7), Some(&0));
        assert_eq!(map.get(&8), None);
        assert_eq!(map.get(&9), Some(&1));
        assert_eq!((snapshot.len(), map.len()), (1000, 999));
        assert_eq!(map.iter().count(), 999);
    }

    #[test]
    fn get_or_default_counts_new_entries_once() {
        let mut map: ShardMap<&str, Vec<u8>> = ShardMap::default();
        map.get_or_default("a").push(1);
        map.get_or_default("a").push(2);
        assert_eq!(map.len(), 1);
        assert_eq!(map.get("a"), Some(&vec![1, 2]));
    }
}
