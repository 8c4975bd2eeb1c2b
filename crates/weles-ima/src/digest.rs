//! Hash algorithms as the kernel names them, and a fixed-size digest value.
//!
//! IMA records file digests with any algorithm of the kernel's `hash_algo` enum, but a verifier can
//! only *compute* a few of them. [`HashAlgorithm`] therefore knows every name the kernel may print
//! (so a log using, say, `sm3` is reported precisely instead of as garbage), while [`Bank`] is the
//! subset we can replay a PCR with.

use std::fmt;

use sha1::Sha1;
use sha2::{Digest as _, Sha256, Sha384, Sha512};

/// The longest digest any supported algorithm produces (SHA-512, Streebog-512, SHA3-512).
pub const MAX_DIGEST_LEN: usize = 64;

/// The kernel's `enum hash_algo` (include/uapi/linux/hash_info.h), in its numeric order.
///
/// The numbers matter: IMA signature headers carry them on the wire.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
#[repr(u8)]
pub enum HashAlgorithm {
    Md4 = 0,
    Md5 = 1,
    Sha1 = 2,
    RipeMd160 = 3,
    Sha256 = 4,
    Sha384 = 5,
    Sha512 = 6,
    Sha224 = 7,
    RipeMd128 = 8,
    RipeMd256 = 9,
    RipeMd320 = 10,
    Wp256 = 11,
    Wp384 = 12,
    Wp512 = 13,
    Tgr128 = 14,
    Tgr160 = 15,
    Tgr192 = 16,
    Sm3_256 = 17,
    Streebog256 = 18,
    Streebog512 = 19,
    Sha3_256 = 20,
    Sha3_384 = 21,
    Sha3_512 = 22,
}

const ALL: [HashAlgorithm; 23] = {
    use HashAlgorithm::*;
    [
        Md4,
        Md5,
        Sha1,
        RipeMd160,
        Sha256,
        Sha384,
        Sha512,
        Sha224,
        RipeMd128,
        RipeMd256,
        RipeMd320,
        Wp256,
        Wp384,
        Wp512,
        Tgr128,
        Tgr160,
        Tgr192,
        Sm3_256,
        Streebog256,
        Streebog512,
        Sha3_256,
        Sha3_384,
        Sha3_512,
    ]
};

impl HashAlgorithm {
    /// Every algorithm the kernel knows, in enum order.
    pub const ALL: &'static [HashAlgorithm] = &ALL;

    /// The name the kernel prints (`hash_algo_name[]` in crypto/hash_info.c).
    pub const fn name(self) -> &'static str {
        use HashAlgorithm::*;
        match self {
            Md4 => "md4",
            Md5 => "md5",
            Sha1 => "sha1",
            RipeMd160 => "rmd160",
            Sha256 => "sha256",
            Sha384 => "sha384",
            Sha512 => "sha512",
            Sha224 => "sha224",
            RipeMd128 => "rmd128",
            RipeMd256 => "rmd256",
            RipeMd320 => "rmd320",
            Wp256 => "wp256",
            Wp384 => "wp384",
            Wp512 => "wp512",
            Tgr128 => "tgr128",
            Tgr160 => "tgr160",
            Tgr192 => "tgr192",
            Sm3_256 => "sm3",
            Streebog256 => "streebog256",
            Streebog512 => "streebog512",
            Sha3_256 => "sha3-256",
            Sha3_384 => "sha3-384",
            Sha3_512 => "sha3-512",
        }
    }

    /// Digest length in bytes (`hash_digest_size[]`).
    pub const fn digest_len(self) -> usize {
        use HashAlgorithm::*;
        match self {
            Md4 | Md5 | RipeMd128 | Tgr128 => 16,
            Sha1 | RipeMd160 | Tgr160 => 20,
            Tgr192 => 24,
            Sha224 => 28,
            Sha256 | RipeMd256 | Wp256 | Sm3_256 | Streebog256 | Sha3_256 => 32,
            RipeMd320 => 40,
            Sha384 | Wp384 | Sha3_384 => 48,
            Sha512 | Wp512 | Streebog512 | Sha3_512 => 64,
        }
    }

    /// Looks an algorithm up by its kernel name.
    pub fn from_name(name: &str) -> Option<Self> {
        ALL.iter().copied().find(|a| a.name() == name)
    }

    /// Looks an algorithm up by its kernel enum number.
    pub fn from_number(n: u8) -> Option<Self> {
        ALL.get(usize::from(n)).copied()
    }

    /// The file-digest algorithms the project's policy language accepts by default.
    pub const fn is_supported_file_digest(self) -> bool {
        matches!(
            self,
            HashAlgorithm::Md5
                | HashAlgorithm::Sha1
                | HashAlgorithm::Sha256
                | HashAlgorithm::Sha384
                | HashAlgorithm::Sha512
        )
    }

    /// The PCR bank of the same algorithm, if we can compute it.
    pub const fn bank(self) -> Option<Bank> {
        match self {
            HashAlgorithm::Sha1 => Some(Bank::Sha1),
            HashAlgorithm::Sha256 => Some(Bank::Sha256),
            HashAlgorithm::Sha384 => Some(Bank::Sha384),
            HashAlgorithm::Sha512 => Some(Bank::Sha512),
            _ => None,
        }
    }
}

impl fmt::Display for HashAlgorithm {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// A PCR bank we can replay: the algorithms a verifier can compute.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Bank {
    Sha1,
    Sha256,
    Sha384,
    Sha512,
}

impl Bank {
    pub const ALL: [Bank; 4] = [Bank::Sha1, Bank::Sha256, Bank::Sha384, Bank::Sha512];

    pub const fn algorithm(self) -> HashAlgorithm {
        match self {
            Bank::Sha1 => HashAlgorithm::Sha1,
            Bank::Sha256 => HashAlgorithm::Sha256,
            Bank::Sha384 => HashAlgorithm::Sha384,
            Bank::Sha512 => HashAlgorithm::Sha512,
        }
    }

    pub const fn digest_len(self) -> usize {
        self.algorithm().digest_len()
    }

    pub const fn name(self) -> &'static str {
        self.algorithm().name()
    }

    pub fn from_name(name: &str) -> Option<Self> {
        HashAlgorithm::from_name(name).and_then(HashAlgorithm::bank)
    }

    /// Hashes the concatenation of `parts`.
    pub fn hash(self, parts: &[&[u8]]) -> Digest {
        fn run<H: sha2::Digest>(parts: &[&[u8]], bank: Bank) -> Digest {
            let mut h = H::new();
            for p in parts {
                h.update(p);
            }
            Digest::from_slice(bank.algorithm(), &h.finalize())
        }
        match self {
            Bank::Sha1 => run::<Sha1>(parts, self),
            Bank::Sha256 => run::<Sha256>(parts, self),
            Bank::Sha384 => run::<Sha384>(parts, self),
            Bank::Sha512 => run::<Sha512>(parts, self),
        }
    }

    /// A streaming hasher for this bank.
    pub fn hasher(self) -> Hasher {
        match self {
            Bank::Sha1 => Hasher::Sha1(Sha1::new()),
            Bank::Sha256 => Hasher::Sha256(Sha256::new()),
            Bank::Sha384 => Hasher::Sha384(Sha384::new()),
            Bank::Sha512 => Hasher::Sha512(Box::new(Sha512::new())),
        }
    }

    /// The PCR value after reset (all zeros).
    pub fn zero(self) -> Digest {
        Digest::filled(self.algorithm(), 0)
    }

    /// `PCR_new = H(PCR_old || digest)`, the TPM2_PCR_Extend rule.
    pub fn extend(self, pcr: &Digest, digest: &Digest) -> Digest {
        self.hash(&[pcr.as_bytes(), digest.as_bytes()])
    }
}

impl fmt::Display for Bank {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// An incremental hasher over one of the [`Bank`] algorithms.
pub enum Hasher {
    Sha1(Sha1),
    Sha256(Sha256),
    Sha384(Sha384),
    Sha512(Box<Sha512>),
}

impl Hasher {
    pub fn update(&mut self, data: &[u8]) {
        match self {
            Hasher::Sha1(h) => h.update(data),
            Hasher::Sha256(h) => h.update(data),
            Hasher::Sha384(h) => h.update(data),
            Hasher::Sha512(h) => h.update(data),
        }
    }

    pub fn finalize(self) -> Digest {
        match self {
            Hasher::Sha1(h) => Digest::from_slice(HashAlgorithm::Sha1, &h.finalize()),
            Hasher::Sha256(h) => Digest::from_slice(HashAlgorithm::Sha256, &h.finalize()),
            Hasher::Sha384(h) => Digest::from_slice(HashAlgorithm::Sha384, &h.finalize()),
            Hasher::Sha512(h) => Digest::from_slice(HashAlgorithm::Sha512, &h.finalize()),
        }
    }
}

/// A digest value tagged with its algorithm, stored inline (no allocation).
///
/// Invariant: `len == alg.digest_len()` and the bytes past `len` are zero, so derived equality and
/// hashing are exact.
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub struct Digest {
    alg: HashAlgorithm,
    len: u8,
    bytes: [u8; MAX_DIGEST_LEN],
}

impl Digest {
    /// Builds a digest from bytes of exactly the algorithm's length; `None` otherwise.
    pub fn new(alg: HashAlgorithm, bytes: &[u8]) -> Option<Self> {
        (bytes.len() == alg.digest_len()).then(|| Self::from_slice(alg, bytes))
    }

    /// Only for lengths already known to be right (internal: hash outputs).
    fn from_slice(alg: HashAlgorithm, bytes: &[u8]) -> Self {
        let mut out = [0u8; MAX_DIGEST_LEN];
        let len = bytes.len().min(MAX_DIGEST_LEN);
        out[..len].copy_from_slice(&bytes[..len]);
        Digest {
            alg,
            len: len as u8,
            bytes: out,
        }
    }

    /// A digest with every byte set to `byte` (zero for a reset PCR, 0xff for IMA violations).
    pub fn filled(alg: HashAlgorithm, byte: u8) -> Self {
        let mut out = [0u8; MAX_DIGEST_LEN];
        out[..alg.digest_len()].fill(byte);
        Digest {
            alg,
            len: alg.digest_len() as u8,
            bytes: out,
        }
    }

    /// Parses `ALG:HEX`, or bare HEX whose length names exactly one common algorithm.
    pub fn parse(text: &str) -> Result<Self, DigestParseError> {
        let (alg, hex_part) = match text.split_once(':') {
            Some((name, hex_part)) => (
                Some(
                    HashAlgorithm::from_name(&name.to_ascii_lowercase())
                        .ok_or_else(|| DigestParseError::UnknownAlgorithm(name.to_string()))?,
                ),
                hex_part,
            ),
            None => (None, text),
        };
        let bytes = hex::decode(hex_part).map_err(|_| DigestParseError::NotHex)?;
        let alg = match alg {
            Some(a) => a,
            None => algorithm_for_bare_len(bytes.len())
                .ok_or(DigestParseError::AmbiguousLength(bytes.len()))?,
        };
        Digest::new(alg, &bytes).ok_or(DigestParseError::WrongLength {
            alg,
            expected: alg.digest_len(),
            got: bytes.len(),
        })
    }

    pub fn algorithm(&self) -> HashAlgorithm {
        self.alg
    }

    pub fn as_bytes(&self) -> &[u8] {
        &self.bytes[..usize::from(self.len)]
    }

    pub fn to_hex(&self) -> String {
        hex::encode(self.as_bytes())
    }

    pub fn is_all(&self, byte: u8) -> bool {
        self.as_bytes().iter().all(|b| *b == byte)
    }
}

/// The algorithm a bare hex digest of `len` bytes is taken to use (as Keylime does).
pub fn algorithm_for_bare_len(len: usize) -> Option<HashAlgorithm> {
    match len {
        16 => Some(HashAlgorithm::Md5),
        20 => Some(HashAlgorithm::Sha1),
        32 => Some(HashAlgorithm::Sha256),
        48 => Some(HashAlgorithm::Sha384),
        64 => Some(HashAlgorithm::Sha512),
        _ => None,
    }
}

impl fmt::Display for Digest {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}", self.alg, self.to_hex())
    }
}

impl fmt::Debug for Digest {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(self, f)
    }
}

/// Why a textual digest was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DigestParseError {
    #[error("unknown hash algorithm {0:?}")]
    UnknownAlgorithm(String),
    #[error("digest is not hexadecimal")]
    NotHex,
    #[error("a bare digest of {0} bytes does not name an algorithm; write ALG:HEX")]
    AmbiguousLength(usize),
    #[error("{alg} digest must be {expected} bytes, got {got}")]
    WrongLength {
        alg: HashAlgorithm,
        expected: usize,
        got: usize,
    },
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kernel_numbers_and_names_round_trip() {
        for (i, a) in HashAlgorithm::ALL.iter().enumerate() {
            assert_eq!(*a as usize, i);
            assert_eq!(HashAlgorithm::from_number(i as u8), Some(*a));
            assert_eq!(HashAlgorithm::from_name(a.name()), Some(*a));
        }
        assert_eq!(HashAlgorithm::from_number(23), None);
    }

    #[test]
    fn extend_matches_tpm_rule() {
        // sha256("hello") extended into a zero PCR, as measured with swtpm (ecosystem.md §1).
        let d = Bank::Sha256.hash(&[b"hello"]);
        let pcr = Bank::Sha256.extend(&Bank::Sha256.zero(), &d);
        assert!(pcr.to_hex().starts_with("98513120"));
        assert!(pcr.to_hex().ends_with("9878"));
    }

    #[test]
    fn parse_digests() {
        let d = Digest::parse("sha1:0000000000000000000000000000000000000000").unwrap();
        assert_eq!(d.algorithm(), HashAlgorithm::Sha1);
        assert!(Digest::parse(&"ab".repeat(32)).is_ok());
        assert_eq!(
            Digest::parse("sha256:abcd"),
            Err(DigestParseError::WrongLength {
                alg: HashAlgorithm::Sha256,
                expected: 32,
                got: 2
            })
        );
        assert!(matches!(
            Digest::parse("foo:00"),
            Err(DigestParseError::UnknownAlgorithm(_))
        ));
        assert_eq!(Digest::parse("zz"), Err(DigestParseError::NotHex));
        assert_eq!(
            Digest::parse("abcdef"),
            Err(DigestParseError::AmbiguousLength(3))
        );
    }
}
