//! S3 additional checksums, and which proof an object's copy got.
//!
//! S3 stores a checksum with an object uploaded with one (and, since 2025, a CRC64NVME for
//! every new upload) and returns it on a GET or HEAD sent with `x-amz-checksum-mode:
//! ENABLED`. A FULL_OBJECT checksum covers the bytes exactly as they are, whatever the
//! ETag: it proves objects whose ETag is no MD5 (SSE-KMS, SSE-C) and multipart objects
//! without guessing their part size. [`ChecksumHasher`] checks one while the body streams
//! past; the value is recorded with the file so `verify` checks it without the network.
//!
//! A COMPOSITE checksum (value `…-N`) is a checksum of the part checksums: this module
//! does not check it (see [`Checksum::parse`]); such an object falls back to its ETag.

use base64::Engine as _;
use sha1::Sha1;
use sha2::{Digest, Sha256};

/// The checksum algorithms S3 offers.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Algorithm {
    /// CRC-32 (ISO-HDLC), 4 bytes.
    Crc32,
    /// CRC-32C (Castagnoli), 4 bytes.
    Crc32c,
    /// CRC-64/NVME, 8 bytes.
    Crc64Nvme,
    /// SHA-1, 20 bytes.
    Sha1,
    /// SHA-256, 32 bytes.
    Sha256,
}

impl Algorithm {
    /// Every algorithm, strongest first.
    pub const ALL: [Algorithm; 5] = [
        Algorithm::Sha256,
        Algorithm::Sha1,
        Algorithm::Crc64Nvme,
        Algorithm::Crc32c,
        Algorithm::Crc32,
    ];

    /// The lower-case name S3 uses in `x-amz-checksum-<name>`.
    pub fn name(self) -> &'static str {
        match self {
            Algorithm::Crc32 => "crc32",
            Algorithm::Crc32c => "crc32c",
            Algorithm::Crc64Nvme => "crc64nvme",
            Algorithm::Sha1 => "sha1",
            Algorithm::Sha256 => "sha256",
        }
    }

    /// The algorithm named `name` (as in [`Algorithm::name`]).
    pub fn from_name(name: &str) -> Option<Algorithm> {
        Algorithm::ALL.into_iter().find(|a| a.name() == name)
    }

    /// Cryptographic hashes, as against CRCs.
    pub fn is_cryptographic(self) -> bool {
        matches!(self, Algorithm::Sha1 | Algorithm::Sha256)
    }

    fn proof(self) -> Proof {
        match self {
            Algorithm::Crc32 => Proof::Crc32,
            Algorithm::Crc32c => Proof::Crc32c,
            Algorithm::Crc64Nvme => Proof::Crc64Nvme,
            Algorithm::Sha1 => Proof::Sha1,
            Algorithm::Sha256 => Proof::Sha256,
        }
    }
}

/// A FULL_OBJECT checksum of an object: the algorithm and the base64 value S3 sent.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Checksum {
    /// The algorithm.
    pub algorithm: Algorithm,
    /// The base64 value, exactly as S3 sent it.
    pub value: String,
}

impl Checksum {
    /// A full-object checksum from an `x-amz-checksum-<alg>` value, or `None` for a
    /// COMPOSITE one (`…-N`, a checksum of part checksums: checking it needs every part's
    /// size and is not done here) or an undecodable one.
    pub fn parse(algorithm: Algorithm, value: &str) -> Option<Checksum> {
        let value = value.trim();
        if value.contains('-') {
            return None;
        }
        let bytes = base64::engine::general_purpose::STANDARD
            .decode(value)
            .ok()?;
        (bytes.len() == digest_len(algorithm)).then(|| Checksum {
            algorithm,
            value: value.to_owned(),
        })
    }

    /// `<alg>:<base64>`, as recorded in the file's xattr.
    pub fn to_record(&self) -> String {
        format!("{}:{}", self.algorithm.name(), self.value)
    }

    /// The inverse of [`Checksum::to_record`].
    pub fn from_record(s: &str) -> Option<Checksum> {
        let (alg, value) = s.split_once(':')?;
        Checksum::parse(Algorithm::from_name(alg)?, value)
    }

    /// The proof this checksum gives.
    pub fn proof(&self) -> Proof {
        self.algorithm.proof()
    }
}

fn digest_len(a: Algorithm) -> usize {
    match a {
        Algorithm::Crc32 | Algorithm::Crc32c => 4,
        Algorithm::Crc64Nvme => 8,
        Algorithm::Sha1 => 20,
        Algorithm::Sha256 => 32,
    }
}

enum State {
    Crc(crc_fast::Digest),
    Sha1(Sha1),
    Sha256(Sha256),
}

/// Computes one checksum over a body fed in pieces.
pub struct ChecksumHasher {
    algorithm: Algorithm,
    state: State,
}

impl std::fmt::Debug for ChecksumHasher {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ChecksumHasher")
            .field("algorithm", &self.algorithm)
            .finish()
    }
}

impl ChecksumHasher {
    /// A hasher for `algorithm`.
    pub fn new(algorithm: Algorithm) -> ChecksumHasher {
        use crc_fast::CrcAlgorithm as C;
        let state = match algorithm {
            Algorithm::Crc32 => State::Crc(crc_fast::Digest::new(C::Crc32IsoHdlc)),
            Algorithm::Crc32c => State::Crc(crc_fast::Digest::new(C::Crc32Iscsi)),
            Algorithm::Crc64Nvme => State::Crc(crc_fast::Digest::new(C::Crc64Nvme)),
            Algorithm::Sha1 => State::Sha1(Sha1::new()),
            Algorithm::Sha256 => State::Sha256(Sha256::new()),
        };
        ChecksumHasher { algorithm, state }
    }

    /// Feeds the next bytes.
    pub fn update(&mut self, data: &[u8]) {
        match &mut self.state {
            State::Crc(d) => d.update(data),
            State::Sha1(h) => h.update(data),
            State::Sha256(h) => h.update(data),
        }
    }

    /// The base64 checksum of everything fed, as S3 writes it.
    pub fn finish(self) -> String {
        let bytes = match self.state {
            State::Crc(d) => {
                let v = d.finalize();
                match self.algorithm {
                    Algorithm::Crc64Nvme => v.to_be_bytes().to_vec(),
                    _ => (v as u32).to_be_bytes().to_vec(),
                }
            }
            State::Sha1(h) => h.finalize().to_vec(),
            State::Sha256(h) => h.finalize().to_vec(),
        };
        base64::engine::general_purpose::STANDARD.encode(bytes)
    }
}

/// The checksum of `data` with `algorithm`, base64 (tests, uploads).
pub fn checksum_of(algorithm: Algorithm, data: &[u8]) -> String {
    let mut h = ChecksumHasher::new(algorithm);
    h.update(data);
    h.finish()
}

/// How an object's copy was proven to match it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Proof {
    /// The ETag is the MD5 of the content.
    Md5,
    /// The multipart ETag, recomputed with the part size it was uploaded with.
    MultipartMd5,
    /// S3's SHA-256 checksum.
    Sha256,
    /// S3's SHA-1 checksum.
    Sha1,
    /// S3's CRC-64/NVME checksum.
    Crc64Nvme,
    /// S3's CRC-32C checksum.
    Crc32c,
    /// S3's CRC-32 checksum.
    Crc32,
    /// Nothing but the size could be checked (the object is listed as unverified).
    SizeOnly,
}

impl Proof {
    /// The name used in `proofs` counts and in the `user.stowage.proof` xattr.
    pub fn name(self) -> &'static str {
        match self {
            Proof::Md5 => "md5",
            Proof::MultipartMd5 => "multipart_md5",
            Proof::Sha256 => "sha256",
            Proof::Sha1 => "sha1",
            Proof::Crc64Nvme => "crc64nvme",
            Proof::Crc32c => "crc32c",
            Proof::Crc32 => "crc32",
            Proof::SizeOnly => "size_only",
        }
    }
}

/// How many objects each proof covered. `--json` prints it as `proofs`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Serialize)]
pub struct ProofCounts {
    /// ETag is a content MD5.
    pub md5: u64,
    /// Multipart ETag recomputed with the exact part size.
    pub multipart_md5: u64,
    /// S3 SHA-256 checksum.
    pub sha256: u64,
    /// S3 SHA-1 checksum.
    pub sha1: u64,
    /// S3 CRC-64/NVME checksum.
    pub crc64nvme: u64,
    /// S3 CRC-32C checksum.
    pub crc32c: u64,
    /// S3 CRC-32 checksum.
    pub crc32: u64,
    /// Only the size matched: no content proof (also listed as unverified).
    pub size_only: u64,
}

impl ProofCounts {
    /// Counts one object proven by `p`.
    pub fn add(&mut self, p: Proof) {
        *match p {
            Proof::Md5 => &mut self.md5,
            Proof::MultipartMd5 => &mut self.multipart_md5,
            Proof::Sha256 => &mut self.sha256,
            Proof::Sha1 => &mut self.sha1,
            Proof::Crc64Nvme => &mut self.crc64nvme,
            Proof::Crc32c => &mut self.crc32c,
            Proof::Crc32 => &mut self.crc32,
            Proof::SizeOnly => &mut self.size_only,
        } += 1;
    }

    /// True when no object was counted.
    pub fn is_empty(&self) -> bool {
        *self == ProofCounts::default()
    }

    /// `md5 3, sha256 1` for the human summary (methods with a zero count left out).
    pub fn describe(&self) -> String {
        let all = [
            ("md5", self.md5),
            ("multipart_md5", self.multipart_md5),
            ("sha256", self.sha256),
            ("sha1", self.sha1),
            ("crc64nvme", self.crc64nvme),
            ("crc32c", self.crc32c),
            ("crc32", self.crc32),
            ("size_only", self.size_only),
        ];
        all.iter()
            .filter(|(_, n)| *n > 0)
            .map(|(name, n)| format!("{name} {n}"))
            .collect::<Vec<_>>()
            .join(", ")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn checksums_match_known_values() {
        // Reference values: `aws s3api put-object --checksum-algorithm ...` of "hello".
        assert_eq!(checksum_of(Algorithm::Crc32, b"hello"), "NhCmhg==");
        assert_eq!(checksum_of(Algorithm::Crc32c, b"hello"), "mnG7TA==");
        assert_eq!(
            checksum_of(Algorithm::Sha256, b"hello"),
            "LPJNul+wow4m6DsqxbninhsWHlwfp0JecwQzYpOLmCQ="
        );
        assert_eq!(
            checksum_of(Algorithm::Sha1, b"hello"),
            "qvTGHdzF6KLavt4PO0gs2a6pQ00="
        );
        assert_eq!(checksum_of(Algorithm::Crc64Nvme, b"").len(), 12);
    }

    #[test]
    fn composite_and_malformed_values_are_not_full_object_checksums() {
        assert!(Checksum::parse(Algorithm::Crc32, "NhCmhg==-3").is_none());
        assert!(Checksum::parse(Algorithm::Sha256, "NhCmhg==").is_none());
        let c = Checksum::parse(Algorithm::Crc32, "NhCmhg==").unwrap();
        assert_eq!(Checksum::from_record(&c.to_record()), Some(c));
    }
}
