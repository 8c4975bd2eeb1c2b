//! Allowed digests per path: the hot lookup of every verification.
//!
//! Policies list up to millions of paths, each with a few digests. Every path and its digests live
//! in one record of a single arena, and the hash table holds only 4-byte arena offsets: the table
//! stays small enough for the CPU caches, and a lookup touches one place in memory for both the
//! key and its digests. Paths are bytes, because IMA paths need not be UTF-8.
//!
//! Record layout: `u16 key_len || key || u8 count || count × (u8 alg || u8 len || digest)`, with
//! `alg` the kernel's `hash_algo` number or 0xff for a bare (Keylime) digest that matches any
//! algorithm. Adding a digest to a listed path writes a new record and repoints the slot.
//!
//! The table is hashbrown's, with foldhash randomly seeded per process. Only the tenant's signed
//! policy inserts keys; guest-controlled paths are only looked up, which cannot degrade the table.

use std::hash::BuildHasher;

use hashbrown::{DefaultHashBuilder, HashTable};
use weles_ima::{Digest, HashAlgorithm};

const ANY_ALGORITHM: u8 = 0xff;

/// A map from path (or buffer name) to its allowed digests.
#[derive(Clone, Default)]
pub struct Allowlist {
    table: HashTable<u32>,
    hasher: DefaultHashBuilder,
    arena: Vec<u8>,
}

impl std::fmt::Debug for Allowlist {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "Allowlist({} names, {} bytes)",
            self.len(),
            self.arena.len()
        )
    }
}

/// The result of looking an entry's digest up.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Lookup {
    Allowed,
    /// The name is listed, but not with this digest.
    OtherDigests,
    NotListed,
}

/// One stored digest, borrowed from the arena.
struct Stored<'a> {
    alg: Option<HashAlgorithm>,
    bytes: &'a [u8],
}

/// The stored form of a digest: algorithm code and (at most 255) bytes.
fn norm<'a>((alg, bytes): &(Option<HashAlgorithm>, &'a [u8])) -> (u8, &'a [u8]) {
    (
        alg.map_or(ANY_ALGORITHM, |a| a as u8),
        &bytes[..bytes.len().min(usize::from(u8::MAX))],
    )
}

fn key_at(arena: &[u8], at: u32) -> &[u8] {
    let at = at as usize;
    let len = usize::from(u16::from_le_bytes([arena[at], arena[at + 1]]));
    &arena[at + 2..at + 2 + len]
}

/// The digests of the record at `at`.
fn digests_at(arena: &[u8], at: u32) -> impl Iterator<Item = Stored<'_>> {
    let at = at as usize;
    let key_len = usize::from(u16::from_le_bytes([arena[at], arena[at + 1]]));
    let mut pos = at + 2 + key_len;
    let count = arena[pos];
    pos += 1;
    (0..count).map(move |_| {
        let (alg, len) = (arena[pos], usize::from(arena[pos + 1]));
        let bytes = &arena[pos + 2..pos + 2 + len];
        pos += 2 + len;
        Stored {
            alg: (alg != ANY_ALGORITHM)
                .then(|| HashAlgorithm::from_number(alg))
                .flatten(),
            bytes,
        }
    })
}

impl Allowlist {
    pub fn new() -> Self {
        Self::default()
    }

    /// An empty list sized for about `names` names.
    pub fn with_capacity(names: usize) -> Self {
        Allowlist {
            table: HashTable::with_capacity(names),
            hasher: DefaultHashBuilder::default(),
            arena: Vec::with_capacity(names.saturating_mul(80)),
        }
    }

    /// Number of listed names.
    pub fn len(&self) -> usize {
        self.table.len()
    }

    pub fn is_empty(&self) -> bool {
        self.table.is_empty()
    }

    fn find(&self, name: &[u8]) -> Option<u32> {
        let h = self.hasher.hash_one(name);
        self.table
            .find(h, |&at| key_at(&self.arena, at) == name)
            .copied()
    }

    /// Allows `bytes` (of `alg`, or of any algorithm when `None`) for `name`. A digest already
    /// allowed is kept once. Names longer than 64 KiB are ignored: no IMA path is longer than
    /// PATH_MAX (4096), so they could never match.
    pub fn insert(&mut self, name: &[u8], alg: Option<HashAlgorithm>, bytes: &[u8]) {
        self.insert_all(name, &[(alg, bytes)]);
    }

    /// Allows several digests for `name` at once (one record).
    pub fn insert_all(&mut self, name: &[u8], digests: &[(Option<HashAlgorithm>, &[u8])]) {
        let Ok(key_len) = u16::try_from(name.len()) else {
            return;
        };
        let h = self.hasher.hash_one(name);
        let existing = self
            .table
            .find(h, |&at| key_at(&self.arena, at) == name)
            .copied();
        if existing.is_none() {
            self.insert_new(h, key_len, name, digests);
            return;
        }
        let mut all: Vec<(u8, &[u8])> = Vec::with_capacity(digests.len());
        // Merging into a listed name: rewrite its record with the union of digests.
        let old: Vec<(u8, Vec<u8>)> = existing
            .map(|at| {
                digests_at(&self.arena, at)
                    .map(|d| (d.alg.map_or(ANY_ALGORITHM, |a| a as u8), d.bytes.to_vec()))
                    .collect()
            })
            .unwrap_or_default();
        for (a, b) in &old {
            all.push((*a, b));
        }
        for (alg, bytes) in digests {
            let code = alg.map_or(ANY_ALGORITHM, |a| a as u8);
            let bytes = &bytes[..bytes.len().min(usize::from(u8::MAX))];
            if !all.iter().any(|(c, b)| *c == code && *b == bytes) {
                all.push((code, bytes));
            }
        }
        if all.len() == old.len() {
            return;
        }
        let Ok(count) = u8::try_from(all.len()) else {
            // 255 digests for one path is the format's limit; more cannot be meant.
            return;
        };
        let Ok(at) = u32::try_from(self.arena.len()) else {
            // Beyond 4 GiB of policy data: the offsets cannot address it.
            return;
        };
        self.arena.extend_from_slice(&key_len.to_le_bytes());
        self.arena.extend_from_slice(name);
        self.arena.push(count);
        for (code, bytes) in &all {
            self.arena.push(*code);
            self.arena.push(bytes.len() as u8);
            self.arena.extend_from_slice(bytes);
        }
        if let Some(slot) = self.table.find_mut(h, |&o| key_at(&self.arena, o) == name) {
            *slot = at;
        }
    }

    /// Writes the record of a name not yet listed (the common case: no merging, no allocation).
    fn insert_new(
        &mut self,
        h: u64,
        key_len: u16,
        name: &[u8],
        digests: &[(Option<HashAlgorithm>, &[u8])],
    ) {
        let first_of_its_kind =
            |i: usize| !digests[..i].iter().any(|d| norm(d) == norm(&digests[i]));
        let count = (0..digests.len()).filter(|&i| first_of_its_kind(i)).count();
        let (Ok(count), Ok(at)) = (u8::try_from(count), u32::try_from(self.arena.len())) else {
            // 255 digests for one path, or 4 GiB of policy data: beyond the format's limits.
            return;
        };
        self.arena.extend_from_slice(&key_len.to_le_bytes());
        self.arena.extend_from_slice(name);
        self.arena.push(count);
        for (i, d) in digests.iter().enumerate() {
            if first_of_its_kind(i) {
                let (code, bytes) = norm(d);
                self.arena.push(code);
                self.arena.push(bytes.len() as u8);
                self.arena.extend_from_slice(bytes);
            }
        }
        let (arena, hasher) = (&self.arena, &self.hasher);
        self.table
            .insert_unique(h, at, |&o| hasher.hash_one(key_at(arena, o)));
    }

    pub fn insert_digest(&mut self, name: &[u8], d: &Digest) {
        self.insert(name, Some(d.algorithm()), d.as_bytes());
    }

    /// Whether `name` may have this digest. A stored digest without algorithm matches any; with
    /// one, only the same algorithm (or a query without algorithm).
    pub fn lookup(&self, name: &[u8], alg: Option<HashAlgorithm>, bytes: &[u8]) -> Lookup {
        let Some(at) = self.find(name) else {
            return Lookup::NotListed;
        };
        let hit = digests_at(&self.arena, at)
            .any(|d| d.bytes == bytes && (d.alg.is_none() || alg.is_none() || d.alg == alg));
        if hit {
            Lookup::Allowed
        } else {
            Lookup::OtherDigests
        }
    }

    pub fn contains_name(&self, name: &[u8]) -> bool {
        self.find(name).is_some()
    }

    /// Allowed digests of `name` as text (`alg:hex`, or bare hex), for messages and export.
    pub fn digests_of(&self, name: &[u8]) -> Vec<String> {
        let Some(at) = self.find(name) else {
            return Vec::new();
        };
        digests_at(&self.arena, at)
            .map(|d| match d.alg {
                Some(alg) => format!("{alg}:{}", hex::encode(d.bytes)),
                None => hex::encode(d.bytes),
            })
            .collect()
    }

    /// All names, sorted (for deterministic export).
    pub fn names_sorted(&self) -> Vec<&[u8]> {
        let mut v: Vec<&[u8]> = self
            .table
            .iter()
            .map(|&at| key_at(&self.arena, at))
            .collect();
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
        a.insert_all(
            b"/bin/big",
            &[(Some(HashAlgorithm::Sha512), &[4; 64]), (None, &[5; 20])],
        );
        assert_eq!(a.len(), 3);
        assert_eq!(
            a.lookup(b"/bin/sh", Some(HashAlgorithm::Sha256), &[2; 32]),
            Lookup::Allowed
        );
        assert_eq!(
            a.lookup(b"/bin/sh", Some(HashAlgorithm::Sha256), &[1; 32]),
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
        assert_eq!(
            a.lookup(b"/bin/big", Some(HashAlgorithm::Sha1), &[5; 20]),
            Lookup::Allowed
        );
        assert_eq!(a.digests_of(b"/bin/sh").len(), 2);
        assert_eq!(a.digests_of(b"/bin/big")[1], hex::encode([5u8; 20]));
        assert_eq!(
            a.names_sorted(),
            vec![&b"/bin/big"[..], b"/bin/ls", b"/bin/sh"]
        );
    }

    #[test]
    fn grows_past_its_capacity_and_keeps_everything() {
        let digest = |i: u32| {
            let mut d = [0u8; 20];
            d[..4].copy_from_slice(&i.to_le_bytes());
            d
        };
        let mut a = Allowlist::with_capacity(4);
        for i in 0..5000u32 {
            a.insert(
                format!("/p/{i}").as_bytes(),
                Some(HashAlgorithm::Sha1),
                &digest(i),
            );
        }
        for i in (0..5000u32).step_by(7) {
            a.insert(
                format!("/p/{i}").as_bytes(),
                Some(HashAlgorithm::Sha1),
                &[0xee; 20],
            );
        }
        assert_eq!(a.len(), 5000);
        for i in 0..5000u32 {
            let name = format!("/p/{i}");
            assert_eq!(
                a.lookup(name.as_bytes(), Some(HashAlgorithm::Sha1), &digest(i)),
                Lookup::Allowed
            );
            let extra = if i % 7 == 0 {
                Lookup::Allowed
            } else {
                Lookup::OtherDigests
            };
            assert_eq!(
                a.lookup(name.as_bytes(), Some(HashAlgorithm::Sha1), &[0xee; 20]),
                extra
            );
        }
        assert!(!a.contains_name(&[0xffu8; 70_000]));
        a.insert(&[0xffu8; 70_000], None, &[1; 20]);
        assert_eq!(a.len(), 5000, "over-long names are ignored");
    }
}
