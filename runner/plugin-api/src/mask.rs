//! Masking known secret values in text that is stored or logged: a plugin
//! that echoes a secret, or a deploy script that prints one, leaves `***`
//! in the evidence, the run and the logs instead.

use std::borrow::Cow;

/// What a secret value is replaced with.
pub const MASK: &str = "***";

/// Values shorter than this are not masked: masking `1` or `on` would
/// garble every text without hiding anything worth hiding.
pub const MIN_MASKED_LEN: usize = 4;

/// A set of secret values to mask, longest first (so a value that contains
/// another is masked whole).
#[derive(Debug, Clone, Default)]
pub struct Masker {
    values: Vec<String>,
}

impl Masker {
    /// A masker for `values`; values shorter than [`MIN_MASKED_LEN`] bytes
    /// are left out.
    pub fn new<'a>(values: impl IntoIterator<Item = &'a str>) -> Self {
        let mut values: Vec<String> = values
            .into_iter()
            .filter(|v| v.len() >= MIN_MASKED_LEN)
            .map(str::to_string)
            .collect();
        values.sort_by(|a, b| b.len().cmp(&a.len()).then_with(|| a.cmp(b)));
        values.dedup();
        Masker { values }
    }

    /// Whether there is nothing to mask.
    pub fn is_empty(&self) -> bool {
        self.values.is_empty()
    }

    /// `text` with every known value replaced by [`MASK`].
    pub fn mask<'t>(&self, text: &'t str) -> Cow<'t, str> {
        let mut text = Cow::Borrowed(text);
        for value in &self.values {
            if text.contains(value.as_str()) {
                text = Cow::Owned(text.replace(value.as_str(), MASK));
            }
        }
        text
    }

    /// [`Masker::mask`] on an owned string.
    pub fn mask_string(&self, text: String) -> String {
        match self.mask(&text) {
            Cow::Borrowed(_) => text,
            Cow::Owned(masked) => masked,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn known_values_are_masked_whole_and_short_ones_left() {
        let m = Masker::new(["hunter2", "hunter2-long", "on", "s3cr"]);
        assert_eq!(
            m.mask("a hunter2-long b hunter2 c on s3cr3t"),
            "a *** b *** c on ***3t"
        );
        assert!(matches!(m.mask("nothing here"), Cow::Borrowed(_)));
        assert!(Masker::new(["on", ""]).is_empty());
        assert_eq!(Masker::default().mask_string("x".into()), "x");
    }
}
