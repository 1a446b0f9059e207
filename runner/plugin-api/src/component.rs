//! Reading a component file: bounded, and checked to be a component before
//! anything parses it, so a wrong path (`/dev/zero`, an ELF binary, a core
//! module) gets a short error that names the file and never echoes its
//! bytes.

use std::io::Read;
use std::path::Path;

use sha2::Digest;

/// The largest component file read. Components built with componentize-py
/// (a whole CPython inside) are about 40 MB; SpiderMonkey ones about 10.
pub const MAX_COMPONENT_BYTES: u64 = 128 * 1024 * 1024;

/// `\0asm`: every WebAssembly binary starts with it.
const MAGIC: [u8; 4] = *b"\0asm";

/// The version and layer after the magic: a component is `0d 00 01 00`,
/// a core module `01 00 00 00`.
const COMPONENT_LAYER: [u8; 2] = [0x01, 0x00];

/// The bytes of the component at `path`; errors name the file.
pub fn read_component(path: &Path) -> Result<Vec<u8>, String> {
    let shown = path.display();
    let file = std::fs::File::open(path).map_err(|e| format!("cannot read {shown}: {e}"))?;
    let mut bytes = Vec::new();
    file.take(MAX_COMPONENT_BYTES + 1)
        .read_to_end(&mut bytes)
        .map_err(|e| format!("cannot read {shown}: {e}"))?;
    if bytes.len() as u64 > MAX_COMPONENT_BYTES {
        return Err(format!(
            "{shown} is larger than {} MiB: not a plugin component",
            MAX_COMPONENT_BYTES >> 20
        ));
    }
    if bytes.len() < 8 || bytes[..4] != MAGIC {
        return Err(format!(
            "{shown} is not a WebAssembly component (it does not start with `\\0asm`)"
        ));
    }
    if bytes[6..8] != COMPONENT_LAYER {
        return Err(format!(
            "{shown} is a core WebAssembly module, not a component: build it for \
             wasm32-wasip2, or wrap it with `wasm-tools component new`"
        ));
    }
    Ok(bytes)
}

/// The sha256 of the component at `path`, as hex: how a pipeline pins a
/// plugin. Errors as [`read_component`].
pub fn component_digest(path: &Path) -> Result<String, String> {
    read_component(path).map(|bytes| digest_of(&bytes))
}

/// The sha256 of a component's bytes, as hex (see [`component_digest`]).
pub fn digest_of(bytes: &[u8]) -> String {
    hex::encode(sha2::Sha256::digest(bytes))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_components_are_read_and_their_bytes_never_shown() {
        let dir = tempfile::tempdir().expect("tempdir");
        let cases: [(&str, &[u8], &str); 4] = [
            (
                "elf",
                b"\x7fELF\x02\x01\x01secret-bytes",
                "does not start with",
            ),
            ("text", b"SECRET=hunter2\n", "does not start with"),
            (
                "module",
                b"\0asm\x01\0\0\0secret",
                "core WebAssembly module",
            ),
            ("short", b"\0as", "does not start with"),
        ];
        for (name, bytes, expected) in cases {
            let path = dir.path().join(name);
            std::fs::write(&path, bytes).expect("write");
            let err = read_component(&path).expect_err(name);
            assert!(err.contains(expected), "{name}: {err}");
            assert!(err.contains(&path.display().to_string()), "{name}: {err}");
            for shown in ["secret", "hunter2", "ELF", "0x7f"] {
                assert!(!err.contains(shown), "{name}: {err}");
            }
        }
        let component = dir.path().join("component.wasm");
        std::fs::write(&component, b"\0asm\x0d\0\x01\0").expect("write");
        assert_eq!(read_component(&component).expect("component").len(), 8);
        assert_eq!(component_digest(&component).expect("digest").len(), 64);
    }

    #[test]
    fn an_endless_file_is_cut_off_at_the_cap() {
        let err = read_component(Path::new("/dev/zero")).expect_err("endless");
        assert!(err.contains("larger than 128 MiB"), "{err}");
    }
}
