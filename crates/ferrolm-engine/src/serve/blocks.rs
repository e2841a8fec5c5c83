//! KV memory counted in blocks of `block_size` positions, and the prefix cache.
//!
//! The pool has a fixed number of blocks (the memory budget). A running sequence's cache is
//! paged ([`ferrolm_model::kv`]): full prompt blocks become shared pages, published here keyed
//! by a chain hash of every token up to the block's end, and a later prompt with the same
//! prefix (a shared system prompt, the other choices of `n > 1`) takes the same pages by
//! reference (copy on write: nobody writes into a full block). Every block is counted once:
//! a sequence is charged for the blocks it owns (its partial block and anything not
//! published), the cache for its entries, whether or not sequences also read them. Entries no
//! running sequence reads are evicted least recently used when sequences need room; entries
//! in use are not, so they never force a running sequence out.

use ferrolm_model::kv::KvPage;
use std::collections::HashMap;
use std::hash::{Hash, Hasher};
use std::sync::Arc;

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

/// One full block's pages, one per layer.
pub type Pages = Vec<Arc<KvPage>>;

struct CachedBlock {
    pages: Pages,
    last_used: u64,
}

impl CachedBlock {
    /// Read by a running sequence (which holds clones of the pages).
    fn in_use(&self) -> bool {
        self.pages.first().is_some_and(|p| Arc::strong_count(p) > 1)
    }
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

    /// Blocks owned by sequences plus blocks in the prefix cache.
    pub fn used(&self) -> usize {
        self.held + self.cache.len()
    }

    /// Blocks owned by running sequences.
    pub fn held(&self) -> usize {
        self.held
    }

    /// Cached blocks no running sequence reads (free to evict).
    pub fn idle(&self) -> usize {
        self.cache.values().filter(|b| !b.in_use()).count()
    }

    /// Takes `n` blocks for a sequence, evicting idle cached blocks (least recently used
    /// first) when needed; `false` (and nothing taken or evicted) when even that is not enough.
    pub fn take(&mut self, n: usize) -> bool {
        if self.held + self.cache.len() - self.idle() + n > self.total {
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
        if let Some((&h, _)) = self
            .cache
            .iter()
            .filter(|(_, b)| !b.in_use())
            .min_by_key(|(_, b)| b.last_used)
        {
            self.cache.remove(&h);
        }
    }

    /// A cached block's pages (shared, not copied), marked as just used.
    pub fn lookup(&mut self, h: BlockHash) -> Option<Pages> {
        self.clock += 1;
        let clock = self.clock;
        self.cache.get_mut(&h).map(|b| {
            b.last_used = clock;
            b.pages.clone()
        })
    }

    #[cfg(test)]
    fn contains(&self, h: BlockHash) -> bool {
        self.cache.contains_key(&h)
    }

    /// Publishes a block a sequence owns: the cache takes it over (the sequence is charged
    /// one block less and keeps reading the same pages). `false` when the hash is cached
    /// already; the block then stays the sequence's.
    pub fn adopt(&mut self, h: BlockHash, pages: Pages) -> bool {
        if self.cache.contains_key(&h) {
            return false;
        }
        self.clock += 1;
        self.cache.insert(
            h,
            CachedBlock {
                pages,
                last_used: self.clock,
            },
        );
        self.held = self.held.saturating_sub(1);
        true
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
    fn cached_blocks_give_way_to_sequences_unless_read() {
        let page = || vec![Arc::new(KvPage::default())];
        let mut p = BlockPool::new(4);
        assert!(p.take(4));
        assert!(
            p.adopt(1, page()),
            "published: the sequence's block moves to the cache"
        );
        assert!(p.adopt(2, page()));
        assert!(!p.adopt(2, page()), "cached already");
        assert_eq!((p.used(), p.held(), p.idle()), (4, 2, 2));
        p.release(2);
        let read = p.lookup(1).unwrap(); // a sequence reads block 1 (and it is the newest)
        assert_eq!(p.idle(), 1);
        assert!(p.take(3), "evicts the idle block 2");
        assert!(p.contains(1) && !p.contains(2));
        assert!(!p.take(1), "block 1 is read: it is not evicted");
        assert!(p.contains(1));
        drop(read);
        assert!(p.take(1), "now idle, evicted");
        assert!(!p.contains(1));
        assert_eq!((p.used(), p.held()), (4, 4));
    }
}
