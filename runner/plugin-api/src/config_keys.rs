//! The config keys a plugin accepts in a step's `with:`, declared by the
//! component itself in a custom section named [`SECTION`], so `gantry
//! validate` can name a misspelt key or a URL the plugin may not fetch
//! before a run fails on it.
//!
//! The section holds a JSON object from key to kind: `{"url": "url!",
//! "max": "number"}`; a `!` marks a required key. A Rust plugin declares
//! it with `gantry_sdk::config_keys!` (a section of its core module); a
//! Python or JavaScript plugin in its `plugin.toml` `[config]` table, which
//! `gantry plugin build` appends to the component ([`embed`]). A component
//! without the section accepts any key.

use std::collections::BTreeMap;
use std::fmt;

/// The custom section's name.
pub const SECTION: &str = "gantry:config";

/// The largest section read: a few hundred keys.
const MAX_SECTION_BYTES: usize = 64 * 1024;

/// What a key's value is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum KeyKind {
    /// Any text.
    Text,
    /// An `http`/`https` URL the plugin fetches: its origin must be in the
    /// manifest's `http.allow`.
    Url,
    /// A number.
    Number,
    /// A whole number.
    Integer,
    /// `true` or `false`.
    Bool,
    /// The name of a secret.
    Secret,
}

impl KeyKind {
    const ALL: [(&'static str, KeyKind); 6] = [
        ("text", KeyKind::Text),
        ("url", KeyKind::Url),
        ("number", KeyKind::Number),
        ("integer", KeyKind::Integer),
        ("bool", KeyKind::Bool),
        ("secret", KeyKind::Secret),
    ];

    /// Whether `value` is one of this kind (URLs are checked further by
    /// the caller, against the allowed origins).
    pub fn accepts(self, value: &str) -> bool {
        match self {
            KeyKind::Text | KeyKind::Secret => true,
            KeyKind::Url => {
                url::Url::parse(value).is_ok_and(|u| matches!(u.scheme(), "http" | "https"))
            }
            KeyKind::Number => value.trim().parse::<f64>().is_ok_and(f64::is_finite),
            KeyKind::Integer => value.trim().parse::<i64>().is_ok(),
            KeyKind::Bool => matches!(value.trim(), "true" | "false"),
        }
    }
}

impl fmt::Display for KeyKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let name = Self::ALL
            .iter()
            .find(|(_, k)| k == self)
            .map_or("text", |(n, _)| n);
        f.write_str(name)
    }
}

/// One accepted key.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct KeySpec {
    /// Its kind.
    pub kind: KeyKind,
    /// Whether a step must set it.
    pub required: bool,
}

impl KeySpec {
    /// Parses `kind` or `kind!` (required).
    pub fn parse(text: &str) -> Result<Self, String> {
        let (name, required) = match text.strip_suffix('!') {
            Some(name) => (name, true),
            None => (text, false),
        };
        let kind = KeyKind::ALL
            .iter()
            .find(|(n, _)| *n == name)
            .map(|(_, k)| *k)
            .ok_or_else(|| {
                let kinds: Vec<&str> = KeyKind::ALL.iter().map(|(n, _)| *n).collect();
                format!(
                    "unknown kind {text:?}: one of {} (a trailing `!` makes the key required)",
                    kinds.join(", ")
                )
            })?;
        Ok(KeySpec { kind, required })
    }
}

/// The keys a plugin accepts, by name.
pub type ConfigKeys = BTreeMap<String, KeySpec>;

/// Parses a declaration: a JSON object from key to kind.
pub fn parse(json: &[u8]) -> Result<ConfigKeys, String> {
    let raw: BTreeMap<String, String> = serde_json::from_slice(json)
        .map_err(|e| format!("the `{SECTION}` declaration is not a JSON object of strings: {e}"))?;
    raw.into_iter()
        .map(|(key, kind)| {
            KeySpec::parse(&kind)
                .map(|spec| (key.clone(), spec))
                .map_err(|e| format!("config key `{key}`: {e}"))
        })
        .collect()
}

/// The declaration `component` carries (at its top level or in a core
/// module inside it), if any.
pub fn declared(component: &[u8]) -> Result<Option<ConfigKeys>, String> {
    find_section(component, 0).map(parse).transpose()
}

/// `component` with `json` appended as its declaration, in place of any
/// declaration appended before (building twice leaves one).
pub fn embed(component: &[u8], json: &str) -> Vec<u8> {
    let mut payload = Vec::new();
    leb128(SECTION.len() as u64, &mut payload);
    payload.extend_from_slice(SECTION.as_bytes());
    payload.extend_from_slice(json.as_bytes());
    let mut out = without_top_level_declaration(component);
    out.push(0);
    leb128(payload.len() as u64, &mut out);
    out.extend_from_slice(&payload);
    out
}

/// Writes `keys` (a manifest's `[config]`, key to kind) into the component
/// file at `path` as its declaration; nothing when there are none.
pub fn embed_file(path: &std::path::Path, keys: &BTreeMap<String, String>) -> Result<(), String> {
    if keys.is_empty() {
        return Ok(());
    }
    let json = serde_json::to_string(keys).map_err(|e| e.to_string())?;
    let bytes = crate::read_component(path)?;
    std::fs::write(path, embed(&bytes, &json)).map_err(|e| format!("{}: {e}", path.display()))
}

/// `binary` without the declaration sections at its top level (a binary
/// that does not parse is returned whole).
fn without_top_level_declaration(binary: &[u8]) -> Vec<u8> {
    let mut out = binary.get(..8).unwrap_or(binary).to_vec();
    let mut at = 8;
    while at < binary.len() {
        let start = at;
        let id = binary[at];
        at += 1;
        let Some(body) =
            read_leb128(binary, &mut at).and_then(|size| binary.get(at..at.checked_add(size)?))
        else {
            return binary.to_vec();
        };
        at += body.len();
        if id != 0 || custom_section(body).map(|(name, _)| name) != Some(SECTION.as_bytes()) {
            out.extend_from_slice(&binary[start..at]);
        }
    }
    out
}

/// The name and the data of a custom section whose body is `body`.
fn custom_section(body: &[u8]) -> Option<(&[u8], &[u8])> {
    let mut at = 0;
    let len = read_leb128(body, &mut at)?;
    let end = at.checked_add(len)?;
    Some((body.get(at..end)?, body.get(end..)?))
}

fn leb128(mut n: u64, out: &mut Vec<u8>) {
    loop {
        let byte = (n & 0x7f) as u8;
        n >>= 7;
        if n == 0 {
            out.push(byte);
            return;
        }
        out.push(byte | 0x80);
    }
}

/// Reads an unsigned LEB128 at `*at`, moving past it.
fn read_leb128(bytes: &[u8], at: &mut usize) -> Option<usize> {
    let mut value: u64 = 0;
    for shift in (0..35).step_by(7) {
        let byte = *bytes.get(*at)?;
        *at += 1;
        value |= u64::from(byte & 0x7f) << shift;
        if byte & 0x80 == 0 {
            return usize::try_from(value).ok();
        }
    }
    None
}

/// The payload of the custom section [`SECTION`] in the binary `bytes`,
/// looking into core modules and components nested in a component.
fn find_section(bytes: &[u8], depth: u8) -> Option<&[u8]> {
    let component = bytes.get(4..8)? == [0x0d, 0x00, 0x01, 0x00];
    let mut at = 8;
    while at < bytes.len() {
        let id = bytes[at];
        at += 1;
        let size = read_leb128(bytes, &mut at)?;
        let body = bytes.get(at..at.checked_add(size)?)?;
        at += size;
        match id {
            0 => {
                let (name, data) = custom_section(body)?;
                if name == SECTION.as_bytes() {
                    return (data.len() <= MAX_SECTION_BYTES).then_some(data);
                }
            }
            // A core module (1) or a component (4) inside a component.
            1 | 4 if component && depth < 4 => {
                if let Some(found) = find_section(body, depth + 1) {
                    return Some(found);
                }
            }
            _ => {}
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    const EMPTY_COMPONENT: &[u8] = b"\0asm\x0d\x00\x01\x00";
    const EMPTY_MODULE: &[u8] = b"\0asm\x01\x00\x00\x00";

    #[test]
    fn a_declaration_appended_to_a_component_is_read_back() {
        let with = embed(EMPTY_COMPONENT, r#"{"url": "url!", "max": "number"}"#);
        let keys = declared(&with).expect("parses").expect("declared");
        assert_eq!(
            keys["url"],
            KeySpec {
                kind: KeyKind::Url,
                required: true
            }
        );
        assert!(!keys["max"].required);
        assert_eq!(declared(EMPTY_COMPONENT), Ok(None));
        // Built again with other keys: one declaration, the new one.
        let again = embed(&with, r#"{"url": "url"}"#);
        let keys = declared(&again).expect("parses").expect("declared");
        assert_eq!(keys.len(), 1);
        assert!(!keys["url"].required);
        assert!(again.len() < with.len());
    }

    #[test]
    fn a_declaration_inside_a_nested_core_module_is_found() {
        let module = embed(EMPTY_MODULE, r#"{"channel": "text"}"#);
        let mut component = EMPTY_COMPONENT.to_vec();
        component.push(1);
        leb128(module.len() as u64, &mut component);
        component.extend_from_slice(&module);
        let keys = declared(&component).expect("parses").expect("declared");
        assert_eq!(keys["channel"].kind, KeyKind::Text);
    }

    #[test]
    fn bad_declarations_and_truncated_binaries_are_errors_or_nothing() {
        let bad = embed(EMPTY_COMPONENT, r#"{"url": "link"}"#);
        let err = declared(&bad).expect_err("unknown kind");
        assert!(err.contains("config key `url`") && err.contains("one of text, url"));
        let mut cut = embed(EMPTY_COMPONENT, r#"{"a": "text"}"#);
        cut.truncate(cut.len() - 3);
        assert_eq!(declared(&cut), Ok(None));
        assert_eq!(declared(b"\0asm"), Ok(None));
    }

    #[test]
    fn kinds_check_values() {
        assert!(KeyKind::Url.accepts("https://example.com/x"));
        assert!(!KeyKind::Url.accepts("ftp://example.com/"));
        assert!(KeyKind::Number.accepts("0.01") && !KeyKind::Number.accepts("NaN"));
        assert!(KeyKind::Integer.accepts("200") && !KeyKind::Integer.accepts("2xx"));
        assert!(KeyKind::Bool.accepts("true") && !KeyKind::Bool.accepts("yes"));
    }
}
