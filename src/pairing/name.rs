//! A device's human-readable name, as shown to the human who approves its pairing.
//!
//! Because a name is shown next to a fingerprint when someone decides whether to trust a
//! device, it must not be able to disguise itself: [`DeviceName::parse`] refuses control
//! characters, bidirectional overrides, isolates and marks, zero-width and other invisible
//! format characters (Unicode category Cf), line and paragraph separators, and whitespace
//! other than the plain space; it trims the ends, normalizes to NFC and bounds the result to
//! [`MAX_DEVICE_NAME_CHARS`] characters and [`MAX_DEVICE_NAME_BYTES`] bytes. On the wire
//! (where the name is bound into the pairing transcript, so both sides must hash the same
//! bytes) [`DeviceName::parse_exact`] also refuses a name that parsing would change.

use unicode_normalization::UnicodeNormalization;

use super::PairingError;

/// Longest device name, in characters (after normalization).
pub const MAX_DEVICE_NAME_CHARS: usize = 64;
/// Longest device name, in UTF-8 bytes (after normalization).
pub const MAX_DEVICE_NAME_BYTES: usize = 256;
/// Longest input looked at before normalizing (so a huge input costs nothing).
const MAX_INPUT_BYTES: usize = 1024;

/// A device's human-readable name: 1 to 64 visible characters, NFC, trimmed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DeviceName(String);

/// Invisible format characters (Unicode 15.1 category Cf), and the invisible fillers and
/// joiners of other categories that render as nothing.
fn invisible(c: char) -> bool {
    matches!(
        c,
        '\u{00AD}'
            | '\u{034F}'
            | '\u{0600}'..='\u{0605}'
            | '\u{061C}'
            | '\u{06DD}'
            | '\u{070F}'
            | '\u{0890}'..='\u{0891}'
            | '\u{08E2}'
            | '\u{115F}'..='\u{1160}'
            | '\u{17B4}'..='\u{17B5}'
            | '\u{180B}'..='\u{180F}'
            | '\u{200B}'..='\u{200F}'
            | '\u{202A}'..='\u{202E}'
            | '\u{2060}'..='\u{206F}'
            | '\u{3164}'
            | '\u{FE00}'..='\u{FE0F}'
            | '\u{FEFF}'
            | '\u{FFA0}'
            | '\u{FFF0}'..='\u{FFFB}'
            | '\u{110BD}'
            | '\u{110CD}'
            | '\u{13430}'..='\u{1343F}'
            | '\u{1BCA0}'..='\u{1BCA3}'
            | '\u{1D173}'..='\u{1D17A}'
            | '\u{E0000}'..='\u{E0FFF}'
    )
}

/// What is wrong with `c` in a device name, if anything.
fn refused(c: char) -> Option<&'static str> {
    match c {
        c if c.is_control() => Some("a control character"),
        '\u{202A}'..='\u{202E}' | '\u{2066}'..='\u{2069}' | '\u{200E}' | '\u{200F}' | '\u{061C}' => {
            Some("a bidirectional override, isolate or mark")
        }
        c if invisible(c) => Some("a zero-width or invisible format character"),
        '\u{2028}' | '\u{2029}' => Some("a line or paragraph separator"),
        ' ' => None,
        c if c.is_whitespace() => Some("whitespace other than a plain space"),
        _ => None,
    }
}

impl DeviceName {
    /// Parses a name typed by a human: trims it, normalizes it to NFC, and refuses it if it
    /// holds a character that could disguise it or is empty or too long.
    pub fn parse(text: &str) -> Result<Self, PairingError> {
        if text.len() > MAX_INPUT_BYTES {
            return Err(Self::too_long());
        }
        if let Some((at, c, what)) =
            text.chars().enumerate().find_map(|(i, c)| refused(c).map(|what| (i, c, what)))
        {
            return Err(PairingError::invalid(
                "device_name",
                format!("a device name may not hold {what} (U+{:04X} at character {})", u32::from(c), at + 1),
            ));
        }
        let name: String = text.trim().nfc().collect();
        // NFC never produces a refused character from allowed ones, but check what is kept.
        if name.chars().any(|c| refused(c).is_some()) {
            return Err(PairingError::invalid(
                "device_name",
                "a device name may not hold invisible characters",
            ));
        }
        if name.is_empty() {
            return Err(PairingError::invalid("device_name", "a device name may not be empty"));
        }
        if name.chars().count() > MAX_DEVICE_NAME_CHARS || name.len() > MAX_DEVICE_NAME_BYTES {
            return Err(Self::too_long());
        }
        Ok(DeviceName(name))
    }

    /// Parses a name as received on the wire or read back from storage: as [`parse`], and it
    /// must already be in the form `parse` gives (trimmed, NFC), since its bytes are bound
    /// into the pairing transcript.
    ///
    /// [`parse`]: DeviceName::parse
    pub fn parse_exact(text: &str) -> Result<Self, PairingError> {
        let name = DeviceName::parse(text)?;
        if name.0 != text {
            return Err(PairingError::invalid(
                "device_name",
                "a device name must be trimmed and in Unicode NFC (palyra pair sends it so)",
            ));
        }
        Ok(name)
    }

    /// How a name read back from storage is shown: as it is if it is a valid name (in its
    /// parsed form), otherwise with every character that could disguise it written as
    /// `\u{XXXX}` and cut at [`MAX_DEVICE_NAME_CHARS`] characters, so that a name planted in
    /// the database by someone who can write it cannot pass for another.
    pub fn shown(stored: &str) -> String {
        if DeviceName::parse_exact(stored).is_ok() {
            return stored.to_owned();
        }
        let mut shown = String::new();
        for (i, c) in stored.chars().enumerate() {
            if i == MAX_DEVICE_NAME_CHARS {
                shown.push('…');
                break;
            }
            match refused(c) {
                Some(_) => shown.push_str(&format!("\\u{{{:04X}}}", u32::from(c))),
                None => shown.push(c),
            }
        }
        shown
    }

    fn too_long() -> PairingError {
        PairingError::invalid(
            "device_name",
            format!(
                "a device name has at most {MAX_DEVICE_NAME_CHARS} characters and {MAX_DEVICE_NAME_BYTES} bytes"
            ),
        )
    }

    /// The name.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn message(text: &str) -> String {
        match DeviceName::parse(text) {
            Err(PairingError::InvalidArgument { field, message }) => {
                assert_eq!(field, "device_name");
                message
            }
            other => panic!("{text:?}: expected a refusal, got {other:?}"),
        }
    }

    #[test]
    fn disguising_characters_are_refused_with_what_is_wrong() {
        for (text, words) in [
            ("tab\u{202E}let", "bidirectional"),
            ("a\u{2066}b\u{2069}", "bidirectional"),
            ("a\u{200E}b", "bidirectional"),
            ("a\u{200F}b", "bidirectional"),
            ("a\u{061C}b", "bidirectional"),
            ("pho\u{200B}ne", "zero-width"),
            ("pho\u{200D}ne", "zero-width"),
            ("pho\u{2060}ne", "zero-width"),
            ("\u{FEFF}phone", "zero-width"),
            ("ph\u{00AD}one", "zero-width"),
            ("tag\u{E0041}", "zero-width"),
            ("a\u{0007}b", "control"),
            ("a\nb", "control"),
            ("a\u{0085}b", "control"),
            ("a\u{2028}b", "separator"),
            ("a\u{3000}b", "whitespace"),
            ("a\u{00A0}b", "whitespace"),
        ] {
            let m = message(text);
            assert!(m.contains(words), "{text:?}: {m}");
            assert!(m.contains("U+"), "{text:?} names the character: {m}");
        }
        assert!(message("").contains("empty"));
        assert!(message("   ").contains("empty"));
        assert!(message(&"n".repeat(65)).contains("at most 64"));
        assert!(message(&"😀".repeat(65)).contains("at most 64"));
        assert!(message(&"n".repeat(10 * 1024)).contains("at most 64"));
    }

    #[test]
    fn stored_names_that_do_not_parse_are_shown_escaped() {
        assert_eq!(DeviceName::shown("phone"), "phone");
        assert_eq!(DeviceName::shown("tab\u{202E}let"), "tab\\u{202E}let");
        assert_eq!(DeviceName::shown("a\u{200B}"), "a\\u{200B}");
        assert_eq!(DeviceName::shown(&"n".repeat(100)), format!("{}…", "n".repeat(64)));
    }

    #[test]
    fn names_are_trimmed_and_nfc() {
        assert_eq!(DeviceName::parse("  phone ").unwrap().as_str(), "phone");
        // "e" + combining acute → "é".
        assert_eq!(DeviceName::parse("cafe\u{0301}").unwrap().as_str(), "caf\u{00E9}");
        assert_eq!(DeviceName::parse("Anna's phone 📱").unwrap().as_str(), "Anna's phone 📱");
        assert_eq!(DeviceName::parse(&"n".repeat(64)).unwrap().as_str().len(), 64);
        assert!(DeviceName::parse_exact("phone").is_ok());
        for text in [" phone", "cafe\u{0301}"] {
            let Err(PairingError::InvalidArgument { message, .. }) = DeviceName::parse_exact(text) else {
                panic!("{text:?} is not in its parsed form")
            };
            assert!(message.contains("NFC"), "{message}");
        }
    }
}
