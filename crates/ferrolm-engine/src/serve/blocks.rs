//! KV memory counted in blocks of `block_size` positions, and the prefix cache.
//!
//! The pool has a fixed number of blocks (the memory budget). A sequence holds
//! `ceil(positions / block_size)` of them while it runs; its keys and values live in its own
//! `KvCache`. Full prompt blocks are also kept in the prefix cache, keyed by a chain hash of
//! every token up to the block's end, so a later prompt with the same prefix (a shared system
//! prompt) copies them instead of recomputing them. Cached blocks count against the budget and
//! are evicted least recently used when running sequences need room; they never force a
//! running sequence out.

use std::collections::HashMap;
use std::hash::{Hash, Hasher};

pub type BlockHash = u64;

/// The hash of a block given the hash of everything before it.
pub fn chain_hash(prev: BlockHash, tokens: &[u32]) -> BlockHash {
    let mut h = std::collections::hash_map::DefaultHasher::new();
    prev.hash(&mut h);
    tokens.hash(&mut h);
    h.finish()
}

/// Chain hashes of the full blocks of `tokens`.
pub fn block_hashes(tokens: &[u32], block_size: usize) -> Vec<BlockHash> {
    let mut prev = 0;
    tokens
        .chunks_exact(block_size)
        .map(|b| {
            prev = chain_hash(prev, b);
            prev
        })
        .collect()
}

/// One full block's keys and values, per layer (`block_size` rows of `Hkv * D` each).
pub struct CachedBlock {
    pub layers: Vec<(Vec<f32>, Vec<f32>)>,
    last_used: u64,
}

pub struct BlockPool {
    total: usize,
    held: usize,
    cache: HashMap<BlockHash, CachedBlock>,
    clock: u64,
}

impl BlockPool {
    pub fn new(total: usize) -> BlockPool {
        BlockPool {
            total,
            held: 0,
            cache: HashMap::new(),
            clock: 0,
        }
    }

    pub fn total(&self) -> usize {
        self.total
    }

    /// Blocks held by sequences plus blocks in the prefix cache.
    pub fn used(&self) -> usize {
        self.held + self.cache.len()
    }

    /// Blocks held by running sequences.
    pub fn held(&self) -> usize {
        self.held
    }

    /// Takes `n` blocks for a sequence, evicting cached blocks (least recently used first)
    /// when needed; `false` (and nothing taken) when even that is not enough.
    pub fn take(&mut self, n: usize) -> bool {
        if self.held + n > self.total {
            return false;
        }
        while self.held + self.cache.len() + n > self.total {
            self.evict_one();
        }
        self.held += n;
        true
    }

    pub fn release(&mut self, n: usize) {
        self.held = self.held.saturating_sub(n);
    }

    fn evict_one(&mut self) {
        if let Some((&h, _)) = self.cache.iter().min_by_key(|(_, b)| b.last_used) {
            self.cache.remove(&h);
        }
    }

    /// A cached block, marked as just used.
    pub fn lookup(&mut self, h: BlockHash) -> Option<&CachedBlock> {
        self.clock += 1;
        let clock = self.clock;
        self.cache.get_mut(&h).map(|b| {
            b.last_used = clock;
            &*b
        })
    }

    pub fn contains(&self, h: BlockHash) -> bool {
        self.cache.contains_key(&h)
    }

    /// Caches a block when there is room (evicting older cached blocks if the pool is full).
    pub fn insert(&mut self, h: BlockHash, layers: Vec<(Vec<f32>, Vec<f32>)>) {
        if self.cache.contains_key(&h) {
            return;
        }
        if self.held + self.cache.len() >= self.total {
            if self.cache.is_empty() {
                return;
            }
            self.evict_one();
        }
        self.clock += 1;
        self.cache.insert(
            h,
            CachedBlock {
                layers,
                last_used: self.clock,
            },
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn chain_hashes_depend_on_the_whole_prefix() {
        let a = block_hashes(&[1, 2, 3, 4, 5, 6, 7, 8, 9], 4);
        let b = block_hashes(&[1, 2, 3, 4, 5, 6, 7, 0], 4);
        let c = block_hashes(&[0, 2, 3, 4, 5, 6, 7, 8], 4);
        assert_eq!(a.len(), 2);
        assert_eq!(a[0], b[0]);
        assert_ne!(a[1], b[1]);
        assert_ne!(a[1], c[1], "same block, different prefix");
    }

    #[test]
    fn cached_blocks_give_way_to_sequences() {
        let mut p = BlockPool::new(4);
        assert!(p.take(2));
        p.insert(1, vec![]);
        p.insert(2, vec![]);
        assert_eq!(p.used(), 4);
        assert!(p.lookup(1).is_some()); // 1 is now the most recently used
        assert!(p.take(1), "evicts a cached block");
        assert!(p.contains(1) && !p.contains(2));
        assert!(!p.take(2), "never more than the pool");
        p.release(3);
        assert_eq!(p.held(), 0);
        assert_eq!(p.used(), 1);
    }
}
