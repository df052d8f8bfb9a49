//! Backup files and recovery codes as `palyra restore` reads them (`src/backup/`): a file from
//! anywhere, a code or share typed by a person. Checks, by the first byte's mode:
//! 0. any bytes: the header and body readers never panic, stay bounded, and refuse with one
//!    line; nothing opens under a key the input does not know;
//! 1. a backup written here from the input's files, then one byte flipped (or none): read back,
//!    the unflipped file gives exactly its files, and every flip anywhere is refused;
//! 2. codes and shares: parse never panics; what parses displays as text that parses to the same.

#![no_main]

use std::io::Read;
use std::sync::OnceLock;

use libfuzzer_sys::fuzz_target;
use palyra::backup::recovery::RecoveryCode;
use palyra::backup::{BackupError, BackupReader, BackupWriter, Header, Share, read_entries, seal_root_key};
use palyra::vault::RootKey;
use ring::aead::{CHACHA20_POLY1305, LessSafeKey, UnboundKey};

fn key() -> LessSafeKey {
    LessSafeKey::new(UnboundKey::new(&CHACHA20_POLY1305, &[9; 32]).expect("key"))
}

/// A well-formed recovery seal (made once: its KDF is slow on purpose).
fn seal() -> &'static [u8] {
    static SEAL: OnceLock<Vec<u8>> = OnceLock::new();
    SEAL.get_or_init(|| {
        let code = RecoveryCode::generate().expect("code");
        seal_root_key(&code, &RootKey::from_bytes([7; 32])).expect("seal")
    })
}

fn one_line(error: &dyn std::fmt::Display) {
    let text = error.to_string();
    assert!(!text.contains('\n') && text.len() < 1024, "{text:?}");
}

/// Reads a whole backup from `bytes`: its files, or the error.
fn read(bytes: &[u8]) -> Result<Vec<(String, Vec<u8>)>, String> {
    let mut input = bytes;
    let (_, hash) = Header::read(&mut input).map_err(|e| e.to_string())?;
    let mut body = BackupReader::new(input, hash, key());
    let mut files = Vec::new();
    read_entries(&mut body, |path, size, content| {
        let mut data = Vec::new();
        // The file's content as the sink sees it (bounded here; the reader authenticates the rest).
        let _ = size;
        content.take(1 << 20).read_to_end(&mut data).map_err(|e| BackupError::Malformed(e.to_string()))?;
        files.push((path.to_owned(), data));
        Ok(())
    })
    .map_err(|e| e.to_string())?;
    Ok(files)
}

fn raw(bytes: &[u8]) {
    if let Err(e) = read(bytes) {
        one_line(&e);
    }
}

fn round_trip(bytes: &[u8]) {
    let Some((flip, rest)) = bytes.split_first_chunk::<4>() else { return };
    let header =
        Header { backup_id: [3; 16], created_at_ms: 1_800_000_000_000, recovery_seal: seal().to_vec() };
    let files: Vec<(String, Vec<u8>)> =
        rest.chunks(97).take(4).enumerate().map(|(i, c)| (format!("dir/f{i}"), c.to_vec())).collect();
    let mut writer = BackupWriter::new(Vec::new(), &header, key()).expect("writer");
    for (path, content) in &files {
        writer.add_file(path, content.len() as u64, &mut content.as_slice()).expect("add");
    }
    let mut written = writer.finish().expect("finish");
    assert_eq!(read(&written).as_ref(), Ok(&files), "a backup reads back as written");
    let at = u32::from_be_bytes(*flip) as usize;
    if at < written.len() * 8 {
        written[at / 8] ^= 1 << (at % 8);
        assert!(read(&written).is_err(), "bit {at} flipped went unnoticed");
    }
    let cut = at % written.len().max(1);
    assert!(read(&written[..cut]).is_err(), "a backup cut at {cut} went unnoticed");
}

fn codes(bytes: &[u8]) {
    let Ok(text) = std::str::from_utf8(bytes) else { return };
    match RecoveryCode::parse(text) {
        Ok(code) => {
            let shown = code.display();
            assert_eq!(RecoveryCode::parse(&shown).map(|c| c.display()).ok(), Some(shown));
        }
        Err(e) => one_line(&e),
    }
    match Share::parse(text) {
        Ok(share) => {
            let shown = share.display();
            assert_eq!(Share::parse(&shown).map(|s| s.display()).ok(), Some(shown));
        }
        Err(e) => one_line(&e),
    }
}

fuzz_target!(|data: &[u8]| {
    let Some((&mode, rest)) = data.split_first() else { return };
    match mode % 3 {
        0 => raw(rest),
        1 => round_trip(rest),
        _ => codes(rest),
    }
});
