//! The backup file, byte by byte (all integers big-endian; docs/storage-format.md, "Backup
//! file"):
//!
//! ```text
//! header  = "PLYRBKUP" ‖ u16(version = 1) ‖ backup_id (16 random bytes) ‖ u64(created_at, unix ms)
//!         ‖ u16(len) ‖ recovery seal (the root key sealed under the recovery code)
//! chunk   = u32(len) ‖ ChaCha20-Poly1305(key, nonce, aad, plaintext)   (len = plaintext + 16 ≤ 1 MiB + 16)
//! key     = HKDF purpose key "palyra backup" ‖ backup_id   (KeyHierarchy::backup_key)
//! nonce   = u32(0) ‖ u64(index)
//! aad     = "palyra.backup.chunk.v1" ‖ SHA-256(header) ‖ u64(index) ‖ u8(final)
//! ```
//!
//! The chunks' plaintexts, concatenated, are the entries: `u8(1) ‖ u16(len) ‖ path ‖ u64(size)
//! ‖ bytes` per file, then `u8(0) ‖ u64(files) ‖ u64(bytes)`; the chunk that ends with that
//! trailer, and only it, has `final = 1`, and nothing may follow it. So an edited byte anywhere
//! (the header included: its hash is in every AAD), a chunk dropped, repeated or moved, a file
//! cut short or extended, fails before the restore has placed anything.

use std::io::{self, Read, Write};

use ring::aead::{Aad, LessSafeKey, Nonce};
use ring::digest;

use super::BackupError;
use super::recovery;

/// The first bytes of every backup.
pub const MAGIC: &[u8; 8] = b"PLYRBKUP";
/// The format this build writes and the newest it reads.
pub const FORMAT_VERSION: u16 = 1;
/// Plaintext bytes per chunk (the last may be shorter).
pub const CHUNK_LEN: usize = 1 << 20;
const TAG_LEN: usize = 16;
const AAD_DOMAIN: &[u8] = b"palyra.backup.chunk.v1";
const ENTRY_FILE: u8 = 1;
const ENTRY_END: u8 = 0;
/// The longest path an entry may name.
const MAX_PATH: usize = 256;

/// A backup's header: what is needed before the body can be opened.
#[derive(Clone)]
pub struct Header {
    /// Random per backup; the body key is derived with it, so no two backups share a key.
    pub backup_id: [u8; 16],
    /// When the backup was made (unix ms).
    pub created_at_ms: u64,
    /// The root key sealed under the recovery code ([`recovery`]).
    pub recovery_seal: Vec<u8>,
}

impl std::fmt::Debug for Header {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Header").field("created_at_ms", &self.created_at_ms).finish_non_exhaustive()
    }
}

impl Header {
    /// The header's bytes.
    pub fn encode(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(8 + 2 + 16 + 8 + 2 + self.recovery_seal.len());
        out.extend_from_slice(MAGIC);
        out.extend_from_slice(&FORMAT_VERSION.to_be_bytes());
        out.extend_from_slice(&self.backup_id);
        out.extend_from_slice(&self.created_at_ms.to_be_bytes());
        out.extend_from_slice(&(self.recovery_seal.len() as u16).to_be_bytes());
        out.extend_from_slice(&self.recovery_seal);
        out
    }

    /// Reads and checks a header from the start of `input`; returns it with the SHA-256 of its
    /// bytes (bound into every chunk).
    pub fn read(input: &mut impl Read) -> Result<(Header, [u8; 32]), BackupError> {
        let mut magic = [0u8; 8];
        let got = read_up_to(input, &mut magic)?;
        if got < MAGIC.len() || &magic != MAGIC {
            return Err(BackupError::NotABackup);
        }
        let mut fixed = [0u8; 2 + 16 + 8 + 2];
        input.read_exact(&mut fixed).map_err(|e| BackupError::from_io(e, "reading the header"))?;
        let version = u16::from_be_bytes([fixed[0], fixed[1]]);
        if version > FORMAT_VERSION {
            return Err(BackupError::NewerVersion(format!("backup format {version}")));
        }
        if version == 0 {
            return Err(BackupError::Malformed("backup format 0".to_owned()));
        }
        let mut backup_id = [0u8; 16];
        backup_id.copy_from_slice(&fixed[2..18]);
        let mut at = [0u8; 8];
        at.copy_from_slice(&fixed[18..26]);
        let seal_len = usize::from(u16::from_be_bytes([fixed[26], fixed[27]]));
        if seal_len != recovery::SEAL_LEN {
            return Err(BackupError::Malformed(format!("a recovery seal of {seal_len} bytes")));
        }
        let mut recovery_seal = vec![0u8; seal_len];
        input.read_exact(&mut recovery_seal).map_err(|e| BackupError::from_io(e, "reading the header"))?;
        recovery::check_seal(&recovery_seal)?;
        let header = Header { backup_id, created_at_ms: u64::from_be_bytes(at), recovery_seal };
        let hash = sha256(&header.encode());
        Ok((header, hash))
    }
}

fn sha256(bytes: &[u8]) -> [u8; 32] {
    let mut out = [0u8; 32];
    out.copy_from_slice(digest::digest(&digest::SHA256, bytes).as_ref());
    out
}

/// Reads until `buf` is full or the input ends; the count read.
fn read_up_to(input: &mut impl Read, buf: &mut [u8]) -> Result<usize, BackupError> {
    let mut got = 0;
    while got < buf.len() {
        match input.read(&mut buf[got..]) {
            Ok(0) => break,
            Ok(n) => got += n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(BackupError::from_io(e, "reading the backup")),
        }
    }
    Ok(got)
}

fn nonce(index: u64) -> Nonce {
    let mut bytes = [0u8; 12];
    bytes[4..].copy_from_slice(&index.to_be_bytes());
    Nonce::assume_unique_for_key(bytes)
}

fn aad(header_hash: &[u8; 32], index: u64, last: bool) -> Vec<u8> {
    let mut aad = Vec::with_capacity(AAD_DOMAIN.len() + 32 + 9);
    aad.extend_from_slice(AAD_DOMAIN);
    aad.extend_from_slice(header_hash);
    aad.extend_from_slice(&index.to_be_bytes());
    aad.push(u8::from(last));
    aad
}

/// Writes a backup: the header, then the entries in sealed chunks. Holds one chunk in memory.
pub struct BackupWriter<W: Write> {
    out: W,
    key: LessSafeKey,
    header_hash: [u8; 32],
    index: u64,
    buf: zeroize::Zeroizing<Vec<u8>>,
    files: u64,
    bytes: u64,
}

impl<W: Write> std::fmt::Debug for BackupWriter<W> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("BackupWriter").field("index", &self.index).field("files", &self.files).finish_non_exhaustive()
    }
}

impl<W: Write> BackupWriter<W> {
    /// Writes `header` to `out`; `key` is the backup's body key (`KeyHierarchy::backup_key`).
    pub fn new(mut out: W, header: &Header, key: LessSafeKey) -> Result<Self, BackupError> {
        let encoded = header.encode();
        out.write_all(&encoded).map_err(|e| BackupError::from_io(e, "writing the header"))?;
        Ok(BackupWriter {
            out,
            key,
            header_hash: sha256(&encoded),
            index: 0,
            buf: zeroize::Zeroizing::new(Vec::with_capacity(CHUNK_LEN + TAG_LEN)),
            files: 0,
            bytes: 0,
        })
    }

    /// Adds a file of `size` bytes read from `content` (exactly `size`, else an error).
    pub fn add_file(&mut self, path: &str, size: u64, content: &mut impl Read) -> Result<(), BackupError> {
        check_path(path)?;
        let mut head = vec![ENTRY_FILE];
        head.extend_from_slice(&(path.len() as u16).to_be_bytes());
        head.extend_from_slice(path.as_bytes());
        head.extend_from_slice(&size.to_be_bytes());
        self.push(&head)?;
        let mut left = size;
        let mut block = vec![0u8; 64 * 1024];
        while left > 0 {
            let want = block.len().min(usize::try_from(left).unwrap_or(usize::MAX));
            let n = content.read(&mut block[..want]).map_err(|e| BackupError::from_io(e, path))?;
            if n == 0 {
                return Err(BackupError::Io(format!("{path} changed size while it was backed up")));
            }
            self.push(&block[..n])?;
            left -= n as u64;
        }
        zeroize::Zeroize::zeroize(&mut block);
        self.files += 1;
        self.bytes += size;
        Ok(())
    }

    /// Writes the trailer in the final chunk; returns the output (not yet synced).
    pub fn finish(mut self) -> Result<W, BackupError> {
        let mut trailer = vec![ENTRY_END];
        trailer.extend_from_slice(&self.files.to_be_bytes());
        trailer.extend_from_slice(&self.bytes.to_be_bytes());
        self.push(&trailer)?;
        self.emit(true)?;
        self.out.flush().map_err(|e| BackupError::from_io(e, "writing the backup"))?;
        Ok(self.out)
    }

    fn push(&mut self, mut bytes: &[u8]) -> Result<(), BackupError> {
        while !bytes.is_empty() {
            if self.buf.len() == CHUNK_LEN {
                self.emit(false)?;
            }
            let take = (CHUNK_LEN - self.buf.len()).min(bytes.len());
            self.buf.extend_from_slice(&bytes[..take]);
            bytes = &bytes[take..];
        }
        Ok(())
    }

    fn emit(&mut self, last: bool) -> Result<(), BackupError> {
        let aad = aad(&self.header_hash, self.index, last);
        self.key
            .seal_in_place_append_tag(nonce(self.index), Aad::from(&aad), &mut *self.buf)
            .map_err(|_| BackupError::Io("sealing a chunk failed".to_owned()))?;
        let len = self.buf.len() as u32;
        let write = |out: &mut W, bytes: &[u8]| {
            out.write_all(bytes).map_err(|e| BackupError::from_io(e, "writing the backup"))
        };
        write(&mut self.out, &len.to_be_bytes())?;
        write(&mut self.out, &self.buf)?;
        self.buf.clear();
        self.index += 1;
        Ok(())
    }
}

/// Reads a backup's body (after [`Header::read`]) as the plaintext of its chunks, each chunk
/// opened before any of its bytes is handed out. Ends (`Ok(0)`) only after the final chunk,
/// and only if nothing follows it; every failure is an `io::Error` carrying a [`BackupError`].
pub struct BackupReader<R: Read> {
    input: R,
    key: LessSafeKey,
    header_hash: [u8; 32],
    index: u64,
    plain: zeroize::Zeroizing<Vec<u8>>,
    pos: usize,
    finished: bool,
}

impl<R: Read> std::fmt::Debug for BackupReader<R> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("BackupReader").field("index", &self.index).finish_non_exhaustive()
    }
}

impl<R: Read> BackupReader<R> {
    /// The body of a backup whose header hashed to `header_hash`, opened with `key`.
    pub fn new(input: R, header_hash: [u8; 32], key: LessSafeKey) -> Self {
        BackupReader {
            input,
            key,
            header_hash,
            index: 0,
            plain: zeroize::Zeroizing::new(Vec::new()),
            pos: 0,
            finished: false,
        }
    }

    fn next_chunk(&mut self) -> Result<(), BackupError> {
        let mut len = [0u8; 4];
        let got = read_up_to(&mut self.input, &mut len)?;
        if got == 0 {
            return Err(BackupError::Truncated(format!("it ends after chunk {} with no final chunk", self.index)));
        }
        if got < 4 {
            return Err(BackupError::Truncated(format!("chunk {} is cut short", self.index)));
        }
        let len = u32::from_be_bytes(len) as usize;
        if !(TAG_LEN..=CHUNK_LEN + TAG_LEN).contains(&len) {
            return Err(BackupError::Edited(format!("chunk {} claims {len} bytes", self.index)));
        }
        self.plain.clear();
        self.plain.resize(len, 0);
        let got = read_up_to(&mut self.input, &mut self.plain)?;
        if got < len {
            return Err(BackupError::Truncated(format!("chunk {} is cut short", self.index)));
        }
        // A chunk opens under exactly one (index, final) pair: try the two it could be.
        let mut last = false;
        let mut opened = None;
        for candidate in [false, true] {
            let mut attempt = self.plain.clone();
            let aad = aad(&self.header_hash, self.index, candidate);
            if let Ok(plain) = self.key.open_in_place(nonce(self.index), Aad::from(&aad), &mut attempt) {
                let n = plain.len();
                attempt.truncate(n);
                opened = Some(attempt);
                last = candidate;
                break;
            }
        }
        let Some(plain) = opened else {
            return Err(BackupError::Edited(format!("chunk {} fails its authentication", self.index)));
        };
        self.plain = plain;
        self.pos = 0;
        self.index += 1;
        if last {
            self.finished = true;
            let mut probe = [0u8; 1];
            if read_up_to(&mut self.input, &mut probe)? != 0 {
                return Err(BackupError::Edited("bytes follow the final chunk".to_owned()));
            }
        }
        Ok(())
    }
}

impl<R: Read> Read for BackupReader<R> {
    fn read(&mut self, out: &mut [u8]) -> io::Result<usize> {
        while self.pos == self.plain.len() {
            if self.finished {
                return Ok(0);
            }
            self.next_chunk().map_err(io::Error::other)?;
        }
        let n = out.len().min(self.plain.len() - self.pos);
        out[..n].copy_from_slice(&self.plain[self.pos..self.pos + n]);
        self.pos += n;
        Ok(n)
    }
}

/// What a body held.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Summary {
    /// Files.
    pub files: u64,
    /// Their bytes.
    pub bytes: u64,
}

/// Reads every entry of `body`, handing each file to `sink` (path, size, its content: the
/// sink may read it or not), checks the trailer and that the body ends with it.
pub fn read_entries<R: Read>(
    body: &mut BackupReader<R>,
    mut sink: impl FnMut(&str, u64, &mut dyn Read) -> Result<(), BackupError>,
) -> Result<Summary, BackupError> {
    let io = |e| BackupError::from_io(e, "reading the backup");
    let mut summary = Summary { files: 0, bytes: 0 };
    loop {
        let mut kind = [0u8; 1];
        body.read_exact(&mut kind).map_err(io)?;
        match kind[0] {
            ENTRY_FILE => {
                let mut len = [0u8; 2];
                body.read_exact(&mut len).map_err(io)?;
                let len = usize::from(u16::from_be_bytes(len));
                if len > MAX_PATH {
                    return Err(BackupError::Malformed(format!("a path of {len} bytes")));
                }
                let mut path = vec![0u8; len];
                body.read_exact(&mut path).map_err(io)?;
                let path = String::from_utf8(path)
                    .map_err(|_| BackupError::Malformed("a path that is not UTF-8".to_owned()))?;
                check_path(&path)?;
                let mut size = [0u8; 8];
                body.read_exact(&mut size).map_err(io)?;
                let size = u64::from_be_bytes(size);
                let mut content = (&mut *body).take(size);
                sink(&path, size, &mut content)?;
                // Whatever the sink left is read (and authenticated) all the same.
                io::copy(&mut content, &mut io::sink()).map_err(io)?;
                if content.limit() != 0 {
                    return Err(BackupError::Truncated(format!("{path} is cut short")));
                }
                summary.files += 1;
                summary.bytes += size;
            }
            ENTRY_END => {
                let mut counts = [0u8; 16];
                body.read_exact(&mut counts).map_err(io)?;
                let files = u64::from_be_bytes(counts[..8].try_into().unwrap_or_default());
                let bytes = u64::from_be_bytes(counts[8..].try_into().unwrap_or_default());
                if (files, bytes) != (summary.files, summary.bytes) {
                    return Err(BackupError::Malformed("the trailer does not count what came before it".to_owned()));
                }
                let mut probe = [0u8; 1];
                if body.read(&mut probe).map_err(io)? != 0 || !body.finished {
                    return Err(BackupError::Malformed("data after the trailer".to_owned()));
                }
                return Ok(summary);
            }
            other => return Err(BackupError::Malformed(format!("an entry of kind {other}"))),
        }
    }
}

/// A path an entry may name: one or two segments of `[A-Za-z0-9][A-Za-z0-9._-]*` (at most 64
/// bytes each), so a restore can never write outside its directory.
pub fn check_path(path: &str) -> Result<(), BackupError> {
    let segments: Vec<&str> = path.split('/').collect();
    let ok = !segments.is_empty()
        && segments.len() <= 2
        && segments.iter().all(|s| {
            let b = s.as_bytes();
            !b.is_empty()
                && b.len() <= 64
                && b[0].is_ascii_alphanumeric()
                && b.iter().all(|c| c.is_ascii_alphanumeric() || matches!(c, b'.' | b'_' | b'-'))
                && !s.contains("..")
        });
    if ok { Ok(()) } else { Err(BackupError::Malformed(format!("an entry path {:?}", path.escape_debug().to_string()))) }
}

#[cfg(test)]
mod tests {
    use super::*;
    use ring::aead::{CHACHA20_POLY1305, UnboundKey};

    fn key() -> LessSafeKey {
        LessSafeKey::new(UnboundKey::new(&CHACHA20_POLY1305, &[5; 32]).unwrap_or_else(|_| unreachable!()))
    }

    /// One header for every test (its seal costs a slow KDF).
    fn header() -> Result<Header, BackupError> {
        static SEAL: std::sync::OnceLock<Vec<u8>> = std::sync::OnceLock::new();
        let seal = match SEAL.get() {
            Some(seal) => seal.clone(),
            None => {
                let code = recovery::RecoveryCode::generate()?;
                let seal = recovery::seal_root_key(&code, &crate::vault::RootKey::from_bytes([1; 32]))?;
                SEAL.get_or_init(|| seal).clone()
            }
        };
        Ok(Header { backup_id: [3; 16], created_at_ms: 42, recovery_seal: seal })
    }

    fn write(files: &[(&str, Vec<u8>)], header: &Header) -> Result<Vec<u8>, BackupError> {
        let mut w = BackupWriter::new(Vec::new(), header, key())?;
        for (path, bytes) in files {
            w.add_file(path, bytes.len() as u64, &mut bytes.as_slice())?;
        }
        w.finish()
    }

    fn read(file: &[u8]) -> Result<Vec<(String, Vec<u8>)>, BackupError> {
        let mut input = file;
        let (_, hash) = Header::read(&mut input)?;
        let mut body = BackupReader::new(input, hash, key());
        let mut out = Vec::new();
        read_entries(&mut body, |path, _, content| {
            let mut bytes = Vec::new();
            content.read_to_end(&mut bytes).map_err(|e| BackupError::from_io(e, path))?;
            out.push((path.to_owned(), bytes));
            Ok(())
        })?;
        Ok(out)
    }

    #[test]
    fn round_trip_across_chunks_and_every_damage_is_refused() -> Result<(), BackupError> {
        let header = header()?;
        let big: Vec<u8> = (0..CHUNK_LEN * 2 + 77).map(|i| (i % 251) as u8).collect();
        let files = vec![("palyra.db", big.clone()), ("identity/ca.pem", b"ca".to_vec()), ("empty", Vec::new())];
        let file = write(&files, &header)?;
        let back = read(&file)?;
        assert_eq!(back.len(), 3);
        assert_eq!(back[0].1, big);
        assert_eq!(back[1], ("identity/ca.pem".to_owned(), b"ca".to_vec()));

        // Truncated anywhere: before the final chunk, refused as truncated or cut.
        let header_len = header.encode().len();
        for cut in [header_len, header_len + 3, header_len + 4 + CHUNK_LEN, file.len() - 1] {
            let err = read(&file[..cut]).err().map(|e| e.to_string()).unwrap_or_default();
            assert!(err.contains("truncated"), "cut at {cut}: {err}");
        }
        // A whole chunk dropped: the next one is at the wrong index.
        let chunk = 4 + CHUNK_LEN + TAG_LEN;
        let mut dropped = file[..header_len].to_vec();
        dropped.extend_from_slice(&file[header_len + chunk..]);
        assert!(matches!(read(&dropped), Err(BackupError::Edited(_))));
        // Cut exactly at a chunk boundary: no final chunk.
        assert!(matches!(read(&file[..header_len + chunk]), Err(BackupError::Truncated(_))));
        // A flipped byte in the header's backup id or created_at, or in a chunk.
        for at in [10, 30, header_len + 10, file.len() - 3] {
            let mut edited = file.clone();
            edited[at] ^= 0x40;
            assert!(matches!(read(&edited), Err(BackupError::Edited(_))), "byte {at}");
        }
        // Two chunks swapped.
        let mut swapped = file[..header_len].to_vec();
        swapped.extend_from_slice(&file[header_len + chunk..header_len + 2 * chunk]);
        swapped.extend_from_slice(&file[header_len..header_len + chunk]);
        swapped.extend_from_slice(&file[header_len + 2 * chunk..]);
        assert!(matches!(read(&swapped), Err(BackupError::Edited(_))));
        // Trailing bytes.
        let mut longer = file.clone();
        longer.push(0);
        assert!(matches!(read(&longer), Err(BackupError::Edited(_))));
        // Not a backup; a newer one.
        assert!(matches!(read(b"SQLite format 3\0"), Err(BackupError::NotABackup)));
        let mut newer = file.clone();
        newer[9] = 2;
        assert!(matches!(read(&newer), Err(BackupError::NewerVersion(_))));
        Ok(())
    }

    /// A small backup: every single flipped bit and every cut is refused, none reads back.
    #[test]
    fn every_flip_and_every_cut_of_a_small_backup_is_refused() -> Result<(), BackupError> {
        let header = header()?;
        let file = write(&[("palyra.db", b"database".to_vec()), ("identity/ca.pem", b"ca".to_vec())], &header)?;
        assert!(read(&file).is_ok());
        for at in 0..file.len() {
            for bit in [0x01, 0x80] {
                let mut edited = file.clone();
                edited[at] ^= bit;
                assert!(read(&edited).is_err(), "byte {at} bit {bit:#x}");
            }
        }
        for cut in 0..file.len() {
            assert!(read(&file[..cut]).is_err(), "cut at {cut}");
        }
        Ok(())
    }

    proptest::proptest! {
        /// The parsers a restore runs on a file from anywhere never panic, whatever the bytes:
        /// the header, the chunk framing after a valid header (with the right key), the code,
        /// a share.
        #[test]
        fn parsing_never_panics(bytes in proptest::collection::vec(proptest::prelude::any::<u8>(), 0..400)) {
            let _ = Header::read(&mut bytes.as_slice());
            let mut file = header().map(|h| h.encode()).unwrap_or_default();
            file.extend_from_slice(&bytes);
            let _ = read(&file);
            let text = String::from_utf8_lossy(&bytes);
            let _ = recovery::RecoveryCode::parse(&text);
            let _ = super::super::shares::Share::parse(&text);
        }

        /// Any text of the code's length: refused with a group named, or a code.
        #[test]
        fn typed_codes_are_read_or_named(text in "[0-9A-Za-z -]{35,41}") {
            match recovery::RecoveryCode::parse(&text) {
                Ok(code) => proptest::prop_assert_eq!(code.display().len(), 41),
                Err(e) => proptest::prop_assert!(e.to_string().contains("recovery code"), "{}", e),
            }
        }
    }

    #[test]
    fn paths_stay_inside_the_directory() {
        for good in ["palyra.db", "identity/ca.pem", "operator/key.pem", "palyra.toml"] {
            assert!(check_path(good).is_ok(), "{good}");
        }
        for bad in ["", "/etc/passwd", "../x", "a/../b", "a/b/c", ".hidden", "a//b", "a\\b", "a/.."] {
            assert!(check_path(bad).is_err(), "{bad}");
        }
    }
}
