//! Allowed digests per path: the hot lookup of every verification.
//!
//! Policies list up to millions of paths, each with a few digests. To keep loading fast and memory
//! near the size of the data, digest bytes live in one arena and each path maps to a small inline
//! list of (algorithm, length, offset) records; a path with one digest costs no allocation beyond
//! its key. Paths are bytes, because IMA paths need not be UTF-8.
//!
//! The map uses hashbrown's default (foldhash, randomly seeded per process). Only the tenant's
//! signed policy inserts keys; guest-controlled paths are only looked up, which cannot degrade
//! the table.

use hashbrown::HashMap;

use weles_ima::{Digest, HashAlgorithm};

/// One allowed digest. `alg == None`: a bare hex digest (Keylime style) that matches any
/// algorithm with the same bytes.
#[derive(Clone, Copy, Debug)]
struct Allowed {
    alg: Option<HashAlgorithm>,
    len: u8,
    start: u32,
}

/// Digests up to this length (SHA-256) are stored in the table slot itself: a lookup then
/// touches the slot and the key, not a third place in memory.
const INLINE: usize = 32;

#[derive(Clone, Debug)]
enum Slot {
    /// The common case: one digest of at most 32 bytes, inline.
    Inline {
        alg: Option<HashAlgorithm>,
        len: u8,
        bytes: [u8; INLINE],
    },
    One(Allowed),
    Many(Vec<Allowed>),
}

/// A map from path (or buffer name) to its allowed digests.
#[derive(Clone, Debug, Default)]
pub struct Allowlist {
    index: HashMap<Box<[u8]>, Slot>,
    arena: Vec<u8>,
}

/// The result of looking an entry's digest up.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Lookup {
    Allowed,
    /// The name is listed, but not with this digest.
    OtherDigests,
    NotListed,
}

impl Allowlist {
    pub fn new() -> Self {
        Self::default()
    }

    pub fn with_capacity(paths: usize) -> Self {
        Allowlist {
            index: HashMap::with_capacity(paths),
            arena: Vec::with_capacity(paths * 32),
        }
    }

    /// Number of listed names.
    pub fn len(&self) -> usize {
        self.index.len()
    }

    pub fn is_empty(&self) -> bool {
        self.index.is_empty()
    }

    /// Allows `bytes` (of `alg`, or of any algorithm when `None`) for `name`. Duplicates are kept
    /// once.
    pub fn insert(&mut self, name: &[u8], alg: Option<HashAlgorithm>, bytes: &[u8]) {
        let len = bytes.len().min(usize::from(u8::MAX)) as u8;
        let bytes = &bytes[..usize::from(len)];
        match self.index.get_mut(name) {
            None if bytes.len() <= INLINE => {
                let mut inline = [0u8; INLINE];
                inline[..bytes.len()].copy_from_slice(bytes);
                self.index.insert(
                    name.into(),
                    Slot::Inline {
                        alg,
                        len,
                        bytes: inline,
                    },
                );
            }
            None => {
                if let Some(rec) = Self::push_arena(&mut self.arena, alg, bytes) {
                    self.index.insert(name.into(), Slot::One(rec));
                }
            }
            Some(slot) => {
                if Self::slot_has(&self.arena, slot, alg, bytes, true) {
                    return;
                }
                let Some(rec) = Self::push_arena(&mut self.arena, alg, bytes) else {
                    return;
                };
                let previous = match slot {
                    Slot::Inline { alg, len, bytes } => {
                        let b = bytes[..usize::from(*len)].to_vec();
                        let a = *alg;
                        Self::push_arena(&mut self.arena, a, &b)
                            .into_iter()
                            .collect()
                    }
                    Slot::One(first) => vec![*first],
                    Slot::Many(v) => std::mem::take(v),
                };
                let mut all = previous;
                all.push(rec);
                *slot = Slot::Many(all);
            }
        }
    }

    /// Appends digest bytes to the arena; `None` past 4 GiB (the arena's index space).
    fn push_arena(
        arena: &mut Vec<u8>,
        alg: Option<HashAlgorithm>,
        bytes: &[u8],
    ) -> Option<Allowed> {
        let start = u32::try_from(arena.len()).ok()?;
        arena.extend_from_slice(bytes);
        Some(Allowed {
            alg,
            len: bytes.len() as u8,
            start,
        })
    }

    /// Whether `slot` holds `bytes`; `exact`: the algorithm must be equal too (for dedup).
    fn slot_has(
        arena: &[u8],
        slot: &Slot,
        alg: Option<HashAlgorithm>,
        bytes: &[u8],
        exact: bool,
    ) -> bool {
        let alg_ok = |a: Option<HashAlgorithm>| {
            if exact {
                a == alg
            } else {
                a.is_none() || alg.is_none() || a == alg
            }
        };
        let rec_ok = |a: &Allowed| {
            usize::from(a.len) == bytes.len()
                && alg_ok(a.alg)
                && &arena[a.start as usize..a.start as usize + usize::from(a.len)] == bytes
        };
        match slot {
            Slot::Inline {
                alg: a,
                len,
                bytes: b,
            } => usize::from(*len) == bytes.len() && alg_ok(*a) && &b[..usize::from(*len)] == bytes,
            Slot::One(a) => rec_ok(a),
            Slot::Many(v) => v.iter().any(rec_ok),
        }
    }

    pub fn insert_digest(&mut self, name: &[u8], d: &Digest) {
        self.insert(name, Some(d.algorithm()), d.as_bytes());
    }

    /// Whether `name` may have this digest.
    pub fn lookup(&self, name: &[u8], alg: Option<HashAlgorithm>, bytes: &[u8]) -> Lookup {
        match self.index.get(name) {
            None => Lookup::NotListed,
            Some(slot) if Self::slot_has(&self.arena, slot, alg, bytes, false) => Lookup::Allowed,
            Some(_) => Lookup::OtherDigests,
        }
    }

    pub fn contains_name(&self, name: &[u8]) -> bool {
        self.index.contains_key(name)
    }

    /// Allowed digests of `name` as text (`alg:hex`, or bare hex), for messages and export.
    pub fn digests_of(&self, name: &[u8]) -> Vec<String> {
        let show = |alg: Option<HashAlgorithm>, b: &[u8]| match alg {
            Some(alg) => format!("{alg}:{}", hex::encode(b)),
            None => hex::encode(b),
        };
        let records: Vec<Allowed> = match self.index.get(name) {
            None => return Vec::new(),
            Some(Slot::Inline { alg, len, bytes }) => {
                return vec![show(*alg, &bytes[..usize::from(*len)])];
            }
            Some(Slot::One(a)) => vec![*a],
            Some(Slot::Many(v)) => v.clone(),
        };
        records
            .iter()
            .map(|a| {
                show(
                    a.alg,
                    &self.arena[a.start as usize..a.start as usize + usize::from(a.len)],
                )
            })
            .collect()
    }

    /// All names, sorted (for deterministic export).
    pub fn names_sorted(&self) -> Vec<&[u8]> {
        let mut v: Vec<&[u8]> = self.index.keys().map(|k| &**k).collect();
        v.sort_unstable();
        v
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn several_digests_per_path_and_bare_digests() {
        let mut a = Allowlist::new();
        a.insert(b"/bin/sh", Some(HashAlgorithm::Sha256), &[1; 32]);
        a.insert(b"/bin/sh", Some(HashAlgorithm::Sha256), &[2; 32]);
        a.insert(b"/bin/sh", Some(HashAlgorithm::Sha256), &[2; 32]);
        a.insert(b"/bin/ls", None, &[3; 32]);
        assert_eq!(a.len(), 2);
        assert_eq!(
            a.lookup(b"/bin/sh", Some(HashAlgorithm::Sha256), &[2; 32]),
            Lookup::Allowed
        );
        assert_eq!(
            a.lookup(b"/bin/sh", Some(HashAlgorithm::Sha256), &[9; 32]),
            Lookup::OtherDigests
        );
        // Same bytes, other algorithm: not the same digest.
        assert_eq!(
            a.lookup(b"/bin/sh", Some(HashAlgorithm::Sm3_256), &[1; 32]),
            Lookup::OtherDigests
        );
        assert_eq!(
            a.lookup(b"/bin/ls", Some(HashAlgorithm::Sm3_256), &[3; 32]),
            Lookup::Allowed
        );
        assert_eq!(a.lookup(b"/bin/x", None, &[3; 32]), Lookup::NotListed);
        assert_eq!(a.digests_of(b"/bin/sh").len(), 2);
    }
}
