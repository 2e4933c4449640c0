//! S3 ETags as integrity checks.
//!
//! For a single-part upload the ETag is the MD5 of the content; for a multipart upload it
//! is `md5(md5(part1) ‖ … ‖ md5(partN))-N`, which depends on the part size the uploader
//! chose. [`ContentHasher`] hashes a body as it streams past, for the plain MD5 or for the
//! most likely part sizes; [`check_file`] re-reads a file for the remaining candidates.
//! Anything we cannot check (SSE-KMS ETags, unusual part sizes) is `Unverifiable`: never
//! counted as good.

use std::io::Read;

use md5::{Digest, Md5};

use crate::checksum::{Checksum, ChecksumHasher, CompositeHasher, Proof};
use crate::checksum::{PartDigest, Partwise};
use crate::s3::ObjectHeaders;

/// A parsed ETag.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ETag {
    /// The MD5 of the whole content.
    Md5([u8; 16]),
    /// A multipart ETag: MD5 of the concatenated part MD5s, and the number of parts.
    Multipart {
        /// `md5(md5(part1) ‖ … ‖ md5(partN))`.
        digest: [u8; 16],
        /// N.
        parts: u32,
    },
    /// Anything else (encrypted objects, non-AWS servers): not a content hash we know.
    Opaque(String),
}

impl ETag {
    /// Parses an ETag as sent (quotes and a `W/` prefix allowed).
    pub fn parse(raw: &str) -> ETag {
        let s = raw.trim().trim_start_matches("W/").trim_matches('"');
        let hex16 = |h: &str| -> Option<[u8; 16]> {
            let mut out = [0u8; 16];
            (h.len() == 32).then_some(())?;
            hex::decode_to_slice(h, &mut out).ok()?;
            Some(out)
        };
        if let Some(d) = hex16(s) {
            return ETag::Md5(d);
        }
        if let Some((h, n)) = s.split_once('-') {
            if let (Some(digest), Ok(parts)) = (hex16(h), n.parse::<u32>()) {
                if parts >= 1 {
                    return ETag::Multipart { digest, parts };
                }
            }
        }
        ETag::Opaque(raw.to_owned())
    }
}

/// The outcome of checking content against an ETag.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
#[serde(tag = "verdict", rename_all = "snake_case")]
pub enum Verdict {
    /// The content matches (plain MD5, or a multipart ETag recomputed for `part_size`).
    Match {
        /// The part size that reproduced a multipart ETag, if it was one.
        part_size: Option<u64>,
    },
    /// The content does not match.
    Mismatch {
        /// What the ETag says.
        expected: String,
        /// What the content hashes to.
        actual: String,
    },
    /// The ETag cannot be checked against content.
    Unverifiable {
        /// Why.
        reason: String,
    },
}

impl Verdict {
    /// True for a match.
    pub fn is_match(&self) -> bool {
        matches!(self, Verdict::Match { .. })
    }
}

const MIB: u64 = 1 << 20;
/// Part sizes uploaders commonly use, most common first (aws cli / boto3 8 MiB, S3
/// console and rclone 5 MiB, object_store 10 MiB, then the other usual choices).
const COMMON_PART_MIB: [u64; 14] = [8, 5, 16, 10, 15, 32, 25, 50, 64, 100, 128, 256, 512, 1024];
/// How many part sizes are hashed while the body streams; others need a re-read.
const STREAMING_CANDIDATES: usize = 2;
/// How many part sizes a re-read tries at most.
const MAX_CANDIDATES: usize = 64;

/// Part sizes that could have produced `parts` parts for an object of `size` bytes, most
/// likely first: the common MiB sizes, then every other whole MiB, then the even split.
pub fn candidate_part_sizes(size: u64, parts: u32) -> Vec<u64> {
    let n = u64::from(parts);
    if n == 0 || size == 0 && n > 1 {
        return Vec::new();
    }
    if n == 1 {
        // One part of any size ≥ the object: the part is the whole object.
        return vec![size.max(1)];
    }
    // P fits when (n-1)·P < size ≤ n·P.
    let lo = size.div_ceil(n);
    let hi = (size - 1) / (n - 1);
    if lo > hi {
        return Vec::new();
    }
    let fits = |p: u64| p >= lo && p <= hi;
    let mut out: Vec<u64> = COMMON_PART_MIB
        .iter()
        .map(|m| m * MIB)
        .filter(|&p| fits(p))
        .collect();
    let mut m = lo.div_ceil(MIB);
    while m * MIB <= hi && out.len() < MAX_CANDIDATES {
        if !out.contains(&(m * MIB)) {
            out.push(m * MIB);
        }
        m += 1;
    }
    if out.len() < MAX_CANDIDATES && !out.contains(&lo) {
        out.push(lo);
    }
    out
}

/// The parts of a multipart ETag: MD5s of each part, MD5'd again.
struct PartHasher(Partwise<Md5>);

impl PartDigest for Md5 {
    fn fresh(&self) -> Self {
        Md5::new()
    }
    fn feed(&mut self, data: &[u8]) {
        self.update(data)
    }
    fn finish_raw(self) -> Vec<u8> {
        self.finalize().to_vec()
    }
}

impl PartHasher {
    fn new(part_size: u64) -> PartHasher {
        PartHasher(Partwise::new(Md5::new(), part_size))
    }

    fn update(&mut self, data: &[u8]) {
        self.0.update(data)
    }

    fn part_size(&self) -> u64 {
        self.0.part_size()
    }

    fn finish(self) -> ([u8; 16], u32) {
        let (outer, count) = self.0.finish();
        (outer.finalize().into(), count)
    }
}

/// Hashes a body as it streams, for the checks its ETag allows.
pub struct ContentHasher {
    etag: ETag,
    size: u64,
    whole: Option<Md5>,
    parts: Vec<PartHasher>,
    seen: u64,
    /// Set when a full-object checksum is the proof instead of the ETag.
    checksum: Option<(Checksum, ChecksumHasher)>,
    /// Set when a COMPOSITE checksum is the proof.
    composite: Option<CompositeCheck>,
    /// Set when the response headers say the ETag is no MD5 and no checksum came.
    opaque_reason: Option<String>,
}

impl std::fmt::Debug for ContentHasher {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ContentHasher")
            .field("etag", &self.etag)
            .field("seen", &self.seen)
            .finish()
    }
}

impl ContentHasher {
    /// A hasher for an object of `size` bytes whose ETag is `etag`.
    pub fn new(etag: Option<&str>, size: u64) -> ContentHasher {
        let etag = etag
            .map(ETag::parse)
            .unwrap_or_else(|| ETag::Opaque(String::new()));
        let (whole, parts) = match &etag {
            ETag::Md5(_) => (Some(Md5::new()), Vec::new()),
            ETag::Multipart { parts, .. } => (
                None,
                candidate_part_sizes(size, *parts)
                    .into_iter()
                    .take(STREAMING_CANDIDATES)
                    .map(PartHasher::new)
                    .collect(),
            ),
            ETag::Opaque(_) => (None, Vec::new()),
        };
        ContentHasher {
            etag,
            size,
            whole,
            parts,
            seen: 0,
            checksum: None,
            composite: None,
            opaque_reason: None,
        }
    }

    /// A hasher for the strongest proof the object's ETag and response `headers` allow:
    /// a SHA-256 or SHA-1 checksum, then a content-MD5 ETag, then a CRC checksum, then a
    /// COMPOSITE SHA checksum, then a multipart ETag, then a COMPOSITE CRC checksum (see
    /// [`composite_wanted`]). An ETag the headers call opaque (SSE-KMS, SSE-C) is never
    /// compared. A CRC ranks above a multipart ETag because it needs no part size (no
    /// guess, no extra request) and S3 checked it on receipt; a COMPOSITE checksum needs
    /// the exact part size, which the caller puts in `headers.part_size`. Only one proof
    /// is hashed per body, so a large object costs one pass of one hash (two when the
    /// server did not say whether its checksum is COMPOSITE).
    pub fn for_object(
        etag: Option<&str>,
        size: u64,
        headers: Option<&ObjectHeaders>,
    ) -> ContentHasher {
        let Some(h) = headers else {
            return ContentHasher::new(etag, size);
        };
        let opaque = h.opaque_etag_reason();
        let mut me = match choose(etag, h) {
            Choice::Checksum(c) => {
                let hasher = ChecksumHasher::new(c.algorithm);
                let mut me = ContentHasher::new(None, size);
                me.checksum = Some((c, hasher));
                return me;
            }
            Choice::Composite(c) => match CompositeCheck::new(c, h) {
                Ok(check) => {
                    let mut me = ContentHasher::new(None, size);
                    me.composite = Some(check);
                    return me;
                }
                // Not checkable: the ETag, if it is one; else unverified with the reason.
                Err(why) => match opaque {
                    Some(reason) => {
                        let mut me = ContentHasher::new(None, size);
                        me.opaque_reason = Some(format!("{reason}, and {why}"));
                        return me;
                    }
                    None => ContentHasher::new(etag, size),
                },
            },
            Choice::Etag => ContentHasher::new(etag, size),
        };
        if let Some(reason) = opaque {
            let composite = if h.composite_checksum {
                " and its checksum is COMPOSITE, with no part count to check it by"
            } else {
                " and the server sent no full-object checksum"
            };
            me = ContentHasher::new(None, size);
            me.opaque_reason = Some(format!("{reason}{composite}"));
        }
        me
    }

    /// The proof a match of this hasher's verdict gives (`part_size` from the verdict).
    pub fn proof(&self, part_size: Option<u64>) -> Proof {
        if let Some((c, _)) = &self.checksum {
            return c.proof();
        }
        if let Some(cc) = &self.composite {
            // A match with a part size is the COMPOSITE one; without, the value was a
            // full-object checksum after all (a server that did not name the type).
            return cc.want.as_matched(part_size).proof();
        }
        match (&self.etag, part_size) {
            _ if self.opaque_reason.is_some() => Proof::SizeOnly,
            (ETag::Md5(_), _) => Proof::Md5,
            (ETag::Multipart { .. }, Some(_)) => Proof::MultipartMd5,
            _ => Proof::SizeOnly,
        }
    }

    /// The checksum this hasher checks, if it checks one (a COMPOSITE one holds only when
    /// the verdict comes with a part size: see [`Checksum::as_matched`]).
    pub fn checksum(&self) -> Option<&Checksum> {
        match &self.composite {
            Some(cc) => Some(&cc.want),
            None => self.checksum.as_ref().map(|(c, _)| c),
        }
    }

    /// Feeds the next bytes of the body.
    pub fn update(&mut self, data: &[u8]) {
        self.seen += data.len() as u64;
        if let Some(h) = &mut self.whole {
            h.update(data);
        }
        for p in &mut self.parts {
            p.update(data);
        }
        if let Some((_, h)) = &mut self.checksum {
            h.update(data);
        }
        if let Some(cc) = &mut self.composite {
            cc.update(data);
        }
    }

    /// Bytes fed so far.
    pub fn bytes(&self) -> u64 {
        self.seen
    }

    /// The verdict from what streamed past. `None` when a multipart ETag needs a re-read
    /// for part sizes not hashed in the stream (see [`check_reader`]).
    pub fn finish(self) -> Option<Verdict> {
        if self.seen != self.size {
            return Some(Verdict::Mismatch {
                expected: format!("{} bytes", self.size),
                actual: format!("{} bytes", self.seen),
            });
        }
        if let Some((want, h)) = self.checksum {
            let got = h.finish();
            let name = want.algorithm.name();
            return Some(if got == want.value {
                Verdict::Match { part_size: None }
            } else {
                Verdict::Mismatch {
                    expected: format!("{name} {}", want.value),
                    actual: format!("{name} {got}"),
                }
            });
        }
        if let Some(cc) = self.composite {
            return Some(cc.finish());
        }
        if let Some(reason) = self.opaque_reason {
            return Some(Verdict::Unverifiable { reason });
        }
        match self.etag {
            ETag::Md5(want) => {
                let got: [u8; 16] = self
                    .whole
                    .expect("md5 hasher for md5 etag")
                    .finalize()
                    .into();
                Some(if got == want {
                    Verdict::Match { part_size: None }
                } else {
                    Verdict::Mismatch {
                        expected: hex::encode(want),
                        actual: hex::encode(got),
                    }
                })
            }
            ETag::Multipart { digest, parts } => {
                let total = candidate_part_sizes(self.size, parts).len();
                let tried = self.parts.len();
                for p in self.parts {
                    let part_size = p.part_size();
                    let (d, n) = p.finish();
                    if d == digest && n == parts {
                        return Some(Verdict::Match {
                            part_size: Some(part_size),
                        });
                    }
                }
                if total > tried {
                    None
                } else {
                    Some(no_part_size_matched(total))
                }
            }
            ETag::Opaque(raw) => Some(Verdict::Unverifiable {
                reason: if raw.is_empty() {
                    "the store sent no ETag".to_owned()
                } else {
                    format!("ETag {raw} is not an MD5 (encrypted object or non-AWS server)")
                },
            }),
        }
    }
}

/// Which proof [`ContentHasher::for_object`] takes.
enum Choice {
    Checksum(Checksum),
    Composite(Checksum),
    Etag,
}

fn choose(etag: Option<&str>, h: &ObjectHeaders) -> Choice {
    let opaque = h.opaque_etag_reason().is_some();
    let parsed = etag.map(ETag::parse);
    let md5_etag = !opaque && matches!(parsed, Some(ETag::Md5(_)));
    if let Some(c) = h.best_checksum() {
        if c.algorithm.is_cryptographic() || !md5_etag {
            return Choice::Checksum(c.clone());
        }
    }
    if let Some(c) = &h.composite {
        // A multipart ETag (128 bits of MD5, exact once the part size is known) beats a
        // COMPOSITE CRC; a COMPOSITE SHA beats it.
        let multipart_etag = !opaque && matches!(parsed, Some(ETag::Multipart { .. }));
        if !md5_etag && (c.algorithm.is_cryptographic() || !multipart_etag) {
            return Choice::Composite(c.clone());
        }
    }
    Choice::Etag
}

/// The part count of the COMPOSITE checksum [`ContentHasher::for_object`] would check for
/// this object: the caller then asks S3 for the part size
/// (`s3::integrity::uniform_part_size`) and puts it in `headers.part_size`.
/// `None` when another proof comes first, or the part size is already there.
pub fn composite_wanted(etag: Option<&str>, headers: &ObjectHeaders) -> Option<u32> {
    match choose(etag, headers) {
        Choice::Composite(c) if headers.part_size.is_none() => c.parts,
        _ => None,
    }
}

/// A COMPOSITE checksum being recomputed; with `full`, also the value as a full-object
/// checksum (when the server did not say which type it is).
struct CompositeCheck {
    want: Checksum,
    parts: Option<CompositeHasher>,
    full: Option<ChecksumHasher>,
    /// Why there is no `parts` hasher (the part size is not known).
    no_part_size: Option<String>,
}

impl CompositeCheck {
    /// `Err` (why) when nothing can be checked: no part size and no chance the value is a
    /// full-object checksum.
    fn new(want: Checksum, h: &ObjectHeaders) -> std::result::Result<CompositeCheck, String> {
        let n = want.parts.unwrap_or(1);
        let name = want.algorithm.name();
        let (parts, no_part_size) = match &h.part_size {
            Some(Ok(p)) => (
                Some(CompositeHasher::new(want.algorithm, *p)),
                String::new(),
            ),
            Some(Err(why)) => (
                None,
                format!("its {name} checksum is COMPOSITE over {n} parts, but {why}"),
            ),
            None => (
                None,
                format!("its {name} checksum is COMPOSITE over {n} parts of unknown size"),
            ),
        };
        let full = h
            .composite_may_be_full_object
            .then(|| ChecksumHasher::new(want.algorithm));
        if parts.is_none() && full.is_none() {
            return Err(no_part_size);
        }
        let no_part_size = parts.is_none().then_some(no_part_size);
        Ok(CompositeCheck {
            want,
            parts,
            full,
            no_part_size,
        })
    }

    fn update(&mut self, data: &[u8]) {
        if let Some(h) = &mut self.parts {
            h.update(data);
        }
        if let Some(h) = &mut self.full {
            h.update(data);
        }
    }

    fn finish(self) -> Verdict {
        let full = self.full.map(ChecksumHasher::finish);
        if full.as_deref() == Some(self.want.value.as_str()) {
            return Verdict::Match { part_size: None };
        }
        let Some(h) = self.parts else {
            // Only the full-object reading could be tried, and it failed: the value is
            // then most likely COMPOSITE, which cannot be checked.
            return Verdict::Unverifiable {
                reason: self.no_part_size.unwrap_or_default(),
            };
        };
        let p = h.part_size();
        let (got, n) = h.finish();
        if got == self.want.value && Some(n) == self.want.parts {
            return Verdict::Match { part_size: Some(p) };
        }
        let name = self.want.algorithm.name();
        Verdict::Mismatch {
            expected: self.want.describe(),
            actual: format!("{name} {got}-{n} (COMPOSITE, {p}-byte parts)"),
        }
    }
}

fn no_part_size_matched(tried: usize) -> Verdict {
    if tried == 0 {
        Verdict::Unverifiable {
            reason: "multipart ETag with a part count impossible for this size".into(),
        }
    } else {
        Verdict::Unverifiable {
            reason: format!(
                "multipart ETag not reproduced with any of {tried} likely part sizes (content may differ, or the uploader used an unusual part size)"
            ),
        }
    }
}

/// Feeds everything `r` yields to `f` in 256 KiB chunks; returns the byte count.
fn read_through(mut r: impl Read, mut f: impl FnMut(&[u8])) -> std::io::Result<u64> {
    let mut buf = vec![0u8; 256 << 10];
    let mut seen = 0u64;
    loop {
        let n = r.read(&mut buf)?;
        if n == 0 {
            return Ok(seen);
        }
        seen += n as u64;
        f(&buf[..n]);
    }
}

fn size_mismatch(size: u64, seen: u64) -> Verdict {
    Verdict::Mismatch {
        expected: format!("{size} bytes"),
        actual: format!("{seen} bytes"),
    }
}

/// Checks everything `r` yields (`size` bytes expected) against an S3 checksum: a
/// full-object one as it is, a COMPOSITE one with `part_size` (the size `migrate` recorded
/// with it; without one it is [`Verdict::Unverifiable`]).
pub fn check_checksum(
    checksum: &Checksum,
    size: u64,
    part_size: Option<u64>,
    r: impl Read,
) -> std::io::Result<Verdict> {
    if checksum.is_composite() {
        let headers = ObjectHeaders {
            composite: Some(checksum.clone()),
            part_size: Some(part_size.ok_or_else(|| "no part size was recorded".to_owned())),
            ..ObjectHeaders::default()
        };
        let Ok(check) = CompositeCheck::new(checksum.clone(), &headers) else {
            return Ok(Verdict::Unverifiable {
                reason: format!(
                    "{} is COMPOSITE and no part size was recorded with it",
                    checksum.describe()
                ),
            });
        };
        let mut h = ContentHasher::new(None, size);
        h.composite = Some(check);
        read_through(r, |b| h.update(b))?;
        return Ok(h
            .finish()
            .expect("a checksum verdict comes from the stream"));
    }
    let mut h = ChecksumHasher::new(checksum.algorithm);
    let seen = read_through(r, |b| h.update(b))?;
    if seen != size {
        return Ok(size_mismatch(size, seen));
    }
    let (name, got) = (checksum.algorithm.name(), h.finish());
    Ok(if got == checksum.value {
        Verdict::Match { part_size: None }
    } else {
        Verdict::Mismatch {
            expected: format!("{name} {}", checksum.value),
            actual: format!("{name} {got}"),
        }
    })
}

/// Checks content read from `open()` (called once per pass) against `etag`, trying every
/// candidate part size for a multipart ETag. `open` must yield the same bytes each time.
pub fn check_reader<R: Read>(
    etag: Option<&str>,
    size: u64,
    mut open: impl FnMut() -> std::io::Result<R>,
) -> std::io::Result<Verdict> {
    match etag.map(ETag::parse) {
        Some(ETag::Multipart { digest, parts }) => {
            let cands = candidate_part_sizes(size, parts);
            // A few part sizes per pass over the file.
            for chunk in cands.chunks(4) {
                let mut hashers: Vec<PartHasher> =
                    chunk.iter().map(|&p| PartHasher::new(p)).collect();
                let seen = read_through(open()?, |b| hashers.iter_mut().for_each(|h| h.update(b)))?;
                if seen != size {
                    return Ok(size_mismatch(size, seen));
                }
                for h in hashers {
                    let p = h.part_size();
                    let (d, n) = h.finish();
                    if d == digest && n == parts {
                        return Ok(Verdict::Match { part_size: Some(p) });
                    }
                }
            }
            Ok(no_part_size_matched(cands.len()))
        }
        _ => {
            let mut h = ContentHasher::new(etag, size);
            read_through(open()?, |b| h.update(b))?;
            Ok(h.finish()
                .expect("non-multipart verdicts come from the stream"))
        }
    }
}

/// Checks the open `file` against `etag` (see [`check_reader`]), reading it from the
/// start with positioned reads: the file's offset is left alone, and no path is resolved.
pub fn check_open_file(
    file: &std::fs::File,
    size: u64,
    etag: Option<&str>,
) -> std::io::Result<Verdict> {
    check_reader(etag, size, || Ok(ReadAt { file, pos: 0 }))
}

/// Checks the open `file` with the strongest proof the object's `etag` and response
/// `headers` allow (see [`ContentHasher::for_object`]); returns the verdict and, for a
/// match, the proof it rests on ([`Proof::SizeOnly`] otherwise).
pub fn check_open_file_for_object(
    file: &std::fs::File,
    size: u64,
    etag: Option<&str>,
    headers: Option<&ObjectHeaders>,
) -> std::io::Result<(Verdict, Proof)> {
    let mut h = ContentHasher::for_object(etag, size, headers);
    let (whole, part) = (h.proof(None), h.proof(Some(0)));
    read_through(ReadAt { file, pos: 0 }, |b| h.update(b))?;
    let v = match h.finish() {
        Some(v) => v,
        None => check_reader(etag, size, || Ok(ReadAt { file, pos: 0 }))?,
    };
    let proof = match &v {
        Verdict::Match { part_size: Some(_) } => part,
        Verdict::Match { part_size: None } => whole,
        _ => Proof::SizeOnly,
    };
    Ok((v, proof))
}

/// Sequential reads of a file through `pread`.
struct ReadAt<'a> {
    file: &'a std::fs::File,
    pos: u64,
}

impl Read for ReadAt<'_> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        use std::os::unix::fs::FileExt;
        let n = self.file.read_at(buf, self.pos)?;
        self.pos += n as u64;
        Ok(n)
    }
}

/// Checks the file at `path` against `etag` (see [`check_reader`]).
pub fn check_file(
    path: &std::path::Path,
    size: u64,
    etag: Option<&str>,
) -> std::io::Result<Verdict> {
    check_reader(etag, size, || std::fs::File::open(path))
}

/// Like [`check_reader`], for a multipart ETag with the part size known to have
/// reproduced it before (`migrate` records it in an xattr): then a different digest is a
/// definite [`Verdict::Mismatch`] instead of an unverifiable guess.
pub fn check_reader_hinted<R: Read>(
    etag: Option<&str>,
    size: u64,
    part_size: Option<u64>,
    mut open: impl FnMut() -> std::io::Result<R>,
) -> std::io::Result<Verdict> {
    match (etag.map(ETag::parse), part_size) {
        (Some(ETag::Multipart { digest, parts }), Some(p)) if p > 0 => {
            let mut h = PartHasher::new(p);
            let seen = read_through(open()?, |b| h.update(b))?;
            if seen != size {
                return Ok(size_mismatch(size, seen));
            }
            let (d, n) = h.finish();
            Ok(if d == digest && n == parts {
                Verdict::Match { part_size: Some(p) }
            } else {
                Verdict::Mismatch {
                    expected: format!("{}-{parts}", hex::encode(digest)),
                    actual: format!("{}-{n} (with the recorded {p}-byte parts)", hex::encode(d)),
                }
            })
        }
        _ => check_reader(etag, size, open),
    }
}

/// The multipart ETag of `data` split into `part_size` parts (for tests and uploads).
pub fn multipart_etag(data: &[u8], part_size: usize) -> String {
    let mut h = PartHasher::new(part_size as u64);
    h.update(data);
    let (d, n) = h.finish();
    format!("\"{}-{}\"", hex::encode(d), n)
}

/// The plain ETag (`"<md5>"`) of `data`.
pub fn md5_etag(data: &[u8]) -> String {
    format!("\"{}\"", hex::encode(Md5::digest(data)))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn data(n: usize) -> Vec<u8> {
        (0..n).map(|i| (i * 31 % 251) as u8).collect()
    }

    #[test]
    fn parses_etag_forms() {
        assert!(matches!(
            ETag::parse("\"d41d8cd98f00b204e9800998ecf8427e\""),
            ETag::Md5(_)
        ));
        assert!(matches!(
            ETag::parse("\"d41d8cd98f00b204e9800998ecf8427e-3\""),
            ETag::Multipart { parts: 3, .. }
        ));
        assert!(matches!(ETag::parse("W/\"abc\""), ETag::Opaque(_)));
        assert!(matches!(
            ETag::parse("\"d41d8cd98f00b204e9800998ecf8427e-0\""),
            ETag::Opaque(_)
        ));
    }

    #[test]
    fn candidates_fit_size_and_part_count() {
        let size = 13_000_000;
        let c = candidate_part_sizes(size, 3);
        assert_eq!(
            c[0],
            5 * MIB,
            "5 MiB is the first common size that fits 13 MB in 3 parts"
        );
        for p in &c {
            assert!(2 * p < size && size <= 3 * p, "{p}");
        }
        assert_eq!(candidate_part_sizes(10, 1), vec![10]);
        assert!(
            candidate_part_sizes(10, 20).is_empty(),
            "20 parts cannot hold 10 bytes"
        );
    }

    #[test]
    fn streaming_md5_matches_and_detects_a_flipped_byte() {
        let d = data(100_000);
        let etag = md5_etag(&d);
        let mut h = ContentHasher::new(Some(&etag), d.len() as u64);
        h.update(&d[..500]);
        h.update(&d[500..]);
        assert_eq!(h.finish(), Some(Verdict::Match { part_size: None }));

        let mut bad = d.clone();
        bad[777] ^= 1;
        let mut h = ContentHasher::new(Some(&etag), d.len() as u64);
        h.update(&bad);
        assert!(matches!(h.finish(), Some(Verdict::Mismatch { .. })));

        let mut h = ContentHasher::new(Some(&etag), d.len() as u64);
        h.update(&d[..99_999]);
        assert!(
            matches!(h.finish(), Some(Verdict::Mismatch { .. })),
            "truncated"
        );
    }

    #[test]
    fn multipart_etags_are_recomputed_in_stream_or_by_rereading() {
        let d = data(13 * MIB as usize + 123);
        // 8 MiB parts: found while streaming (first candidate).
        let etag = multipart_etag(&d, 8 << 20);
        let mut h = ContentHasher::new(Some(&etag), d.len() as u64);
        h.update(&d);
        assert_eq!(
            h.finish(),
            Some(Verdict::Match {
                part_size: Some(8 * MIB)
            })
        );

        // 7 MiB parts: not streamed, found on re-read.
        let etag = multipart_etag(&d, 7 << 20);
        let mut h = ContentHasher::new(Some(&etag), d.len() as u64);
        h.update(&d);
        assert_eq!(h.finish(), None);
        let v = check_reader(Some(&etag), d.len() as u64, || Ok(std::io::Cursor::new(&d))).unwrap();
        assert_eq!(
            v,
            Verdict::Match {
                part_size: Some(7 * MIB)
            }
        );

        // A flipped byte: no part size reproduces it; reported as unverifiable, not good.
        let mut bad = d.clone();
        bad[5] ^= 0x40;
        let v = check_reader(Some(&etag), d.len() as u64, || {
            Ok(std::io::Cursor::new(&bad))
        })
        .unwrap();
        assert!(matches!(v, Verdict::Unverifiable { .. }), "{v:?}");
    }

    #[test]
    fn a_recorded_part_size_turns_a_multipart_guess_into_a_verdict() {
        let d = data(11 * MIB as usize);
        let etag = multipart_etag(&d, 5 << 20);
        let ok = check_reader_hinted(Some(&etag), d.len() as u64, Some(5 * MIB), || {
            Ok(std::io::Cursor::new(&d))
        });
        assert_eq!(
            ok.unwrap(),
            Verdict::Match {
                part_size: Some(5 * MIB)
            }
        );
        let mut bad = d.clone();
        bad[6 << 20] ^= 1;
        let v = check_reader_hinted(Some(&etag), d.len() as u64, Some(5 * MIB), || {
            Ok(std::io::Cursor::new(&bad))
        });
        assert!(matches!(v.unwrap(), Verdict::Mismatch { .. }));
    }

    #[test]
    fn opaque_etags_are_unverifiable() {
        let mut h = ContentHasher::new(Some("\"kms-opaque\""), 3);
        h.update(b"abc");
        assert!(matches!(h.finish(), Some(Verdict::Unverifiable { .. })));
    }

    /// Headers of an SSE-KMS multipart object with a COMPOSITE `alg` checksum of `d` in
    /// `part`-byte parts, and the part size as S3 would state it.
    fn kms_composite(
        alg: crate::checksum::Algorithm,
        d: &[u8],
        part: u64,
        stated: bool,
    ) -> ObjectHeaders {
        let mut h = CompositeHasher::new(alg, part);
        h.update(d);
        let (value, n) = h.finish();
        ObjectHeaders {
            sse: Some("aws:kms".into()),
            composite_checksum: true,
            composite: Checksum::parse_composite(alg, &value, Some(n)),
            composite_may_be_full_object: !stated,
            part_size: Some(Ok(part)),
            ..ObjectHeaders::default()
        }
    }

    fn stream(h: &mut ContentHasher, d: &[u8]) {
        for piece in d.chunks(100_000) {
            h.update(piece);
        }
    }

    #[test]
    fn a_composite_checksum_proves_an_opaque_multipart_object_and_catches_a_flip() {
        use crate::checksum::Algorithm;
        let d = data(2 * (5 << 20) + 12_345);
        let part = (5 << 20) + 7;
        let etag = Some("\"0123456789abcdef0123456789abcdef-3\"");
        for alg in [Algorithm::Sha256, Algorithm::Crc32c] {
            let h = kms_composite(alg, &d, part, true);
            let mut c = ContentHasher::for_object(etag, d.len() as u64, Some(&h));
            assert_eq!(c.proof(Some(part)), Proof::Composite(alg));
            stream(&mut c, &d);
            assert_eq!(
                c.finish(),
                Some(Verdict::Match {
                    part_size: Some(part)
                })
            );
            let mut bad = d.clone();
            bad[6 << 20] ^= 1;
            let mut c = ContentHasher::for_object(etag, d.len() as u64, Some(&h));
            stream(&mut c, &bad);
            assert!(
                matches!(c.finish(), Some(Verdict::Mismatch { .. })),
                "{alg:?}"
            );
        }
    }

    #[test]
    fn a_composite_checksum_without_a_part_size_is_unverifiable_never_a_mismatch() {
        use crate::checksum::Algorithm;
        let d = data(3 << 20);
        let etag = Some("\"0123456789abcdef0123456789abcdef-2\"");
        let mut h = kms_composite(Algorithm::Crc32, &d, 2 << 20, true);
        h.part_size = Some(Err("the server does not state part sizes".into()));
        let mut c = ContentHasher::for_object(etag, d.len() as u64, Some(&h));
        stream(&mut c, &d);
        match c.finish() {
            Some(Verdict::Unverifiable { reason }) => {
                assert!(reason.contains("aws:kms"), "{reason}");
                assert!(reason.contains("does not state part sizes"), "{reason}");
            }
            v => panic!("{v:?}"),
        }
        // Not even asked for: the same.
        h.part_size = None;
        assert_eq!(composite_wanted(etag, &h), Some(2));
        let mut c = ContentHasher::for_object(etag, d.len() as u64, Some(&h));
        stream(&mut c, &d);
        assert!(matches!(c.finish(), Some(Verdict::Unverifiable { .. })));
    }

    #[test]
    fn a_value_of_unstated_type_is_checked_both_ways() {
        use crate::checksum::Algorithm;
        let d = data(3 << 20);
        let etag = Some("\"0123456789abcdef0123456789abcdef-2\"");
        // Really COMPOSITE (moto): proven with the part size.
        let h = kms_composite(Algorithm::Crc32, &d, 2 << 20, false);
        let mut c = ContentHasher::for_object(etag, d.len() as u64, Some(&h));
        stream(&mut c, &d);
        assert_eq!(
            c.finish(),
            Some(Verdict::Match {
                part_size: Some(2 << 20)
            })
        );
        // Really FULL_OBJECT: proven as such, even with no part size known.
        let mut h = h;
        h.composite = Checksum::parse_composite(
            Algorithm::Crc32,
            &crate::checksum::checksum_of(Algorithm::Crc32, &d),
            Some(2),
        );
        h.part_size = Some(Err("no part size".into()));
        let mut c = ContentHasher::for_object(etag, d.len() as u64, Some(&h));
        assert_eq!(c.proof(None), Proof::Crc32);
        stream(&mut c, &d);
        assert_eq!(c.finish(), Some(Verdict::Match { part_size: None }));
        // Neither, and no part size: unverifiable (it may be COMPOSITE), not a mismatch.
        let mut bad = d.clone();
        bad[7] ^= 1;
        let mut c = ContentHasher::for_object(etag, d.len() as u64, Some(&h));
        stream(&mut c, &bad);
        assert!(matches!(c.finish(), Some(Verdict::Unverifiable { .. })));
    }

    #[test]
    fn a_multipart_etag_beats_a_composite_crc_but_not_a_composite_sha() {
        use crate::checksum::Algorithm;
        let d = data(3 << 20);
        let etag = multipart_etag(&d, 2 << 20);
        let mut h = kms_composite(Algorithm::Crc32, &d, 2 << 20, true);
        h.sse = None;
        h.part_size = None;
        assert_eq!(composite_wanted(Some(&etag), &h), None);
        let mut h = kms_composite(Algorithm::Sha256, &d, 2 << 20, true);
        h.sse = None;
        h.part_size = None;
        assert_eq!(composite_wanted(Some(&etag), &h), Some(2));
    }

    #[test]
    fn a_recorded_composite_checksum_is_checked_with_its_part_size() {
        use crate::checksum::Algorithm;
        let d = data(3 << 20);
        let h = kms_composite(Algorithm::Sha1, &d, 1 << 20, true);
        let c = h.composite.unwrap();
        let size = d.len() as u64;
        let check = |part: Option<u64>, body: &[u8]| {
            check_checksum(&c, size, part, std::io::Cursor::new(body.to_vec())).unwrap()
        };
        assert_eq!(
            check(Some(1 << 20), &d),
            Verdict::Match {
                part_size: Some(1 << 20)
            }
        );
        let mut bad = d.clone();
        bad[1] ^= 1;
        assert!(matches!(
            check(Some(1 << 20), &bad),
            Verdict::Mismatch { .. }
        ));
        assert!(matches!(check(None, &d), Verdict::Unverifiable { .. }));
        assert!(matches!(
            check(Some(1 << 20), &d[1..]),
            Verdict::Mismatch { .. }
        ));
    }
}
