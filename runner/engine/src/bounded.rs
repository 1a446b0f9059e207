//! Caps on free text at the engine's boundary. Whatever a plugin, a person
//! or a webhook says is cut to a fixed size, with a visible marker, before it
//! reaches the store; the full text goes to the log only. With these caps
//! and the pipeline's own limits, a run item stays far inside a store item
//! (`runner/engine/tests/largest_checkpoint.rs` measures the worst case).

/// A failure reason, a gate's summary, an evidence summary.
pub const REASON: usize = 2048;
/// A step's detail and a run's reason: a line for people.
pub const LINE: usize = 256;
/// A deployment status description (GitHub takes 140 characters).
pub const DESCRIPTION: usize = 140;
/// A person's reason for an approval or a rejection.
pub const DECISION: usize = 1024;
/// One observation's name.
pub const OBSERVATION_NAME: usize = 128;
/// One observation's value.
pub const OBSERVATION_VALUE: usize = 1024;
/// All observations of one evidence entry together.
pub const OBSERVATIONS: usize = 16 * 1024;
/// A gate's retry-after state, before base64.
pub const GATE_STATE: usize = 16 * 1024;
/// A migration's version.
pub const VERSION: usize = 200;
/// A dead letter's copy of its message.
pub const MESSAGE: usize = 8 * 1024;

/// `text` cut to at most `limit` bytes (on a character boundary), ending in
/// a marker that says how much was cut. `what` and `run` name it in the log
/// line that keeps the full text. Control characters other than newline and
/// tab become U+FFFD: they would be escaped six bytes apiece in the stored
/// JSON, and they have no business in a terminal that shows a run.
pub fn cap(text: &str, limit: usize, what: &str, run: &str) -> String {
    let clean: String = text
        .chars()
        .map(|c| {
            if c.is_control() && c != '\n' && c != '\t' {
                '\u{FFFD}'
            } else {
                c
            }
        })
        .collect();
    if clean.len() <= limit {
        return clean;
    }
    tracing::info!(
        run,
        what,
        text,
        "text cut for the store; the full text is here"
    );
    let marker = format!(" … [{} bytes cut]", text.len());
    let room = limit.saturating_sub(marker.len());
    let mut cut = room.min(clean.len());
    while !clean.is_char_boundary(cut) {
        cut -= 1;
    }
    format!("{}{marker}", &clean[..cut])
}

/// Observations cut name by name and value by value, then dropped from the
/// end (with a last one saying how many) once they pass [`OBSERVATIONS`].
pub fn observations(list: Vec<(String, String)>, run: &str) -> Vec<(String, String)> {
    let mut kept = Vec::with_capacity(list.len());
    let mut total = 0;
    let count = list.len();
    for (i, (name, value)) in list.into_iter().enumerate() {
        let name = cap(&name, OBSERVATION_NAME, "observation name", run);
        let value = cap(&value, OBSERVATION_VALUE, "observation value", run);
        total += name.len() + value.len();
        if total > OBSERVATIONS {
            kept.push((
                "…".to_string(),
                format!("{} more observations cut", count - i),
            ));
            break;
        }
        kept.push((name, value));
    }
    kept
}

/// Observations cut name by name and value by value, in groups of at most
/// [`OBSERVATIONS`] bytes each, in order: for evidence where every
/// observation counts (one per migration file), recorded as one entry per
/// group rather than cut.
pub fn observation_groups(list: Vec<(String, String)>, run: &str) -> Vec<Vec<(String, String)>> {
    let mut groups = Vec::new();
    let mut group = Vec::new();
    let mut total = 0;
    for (name, value) in list {
        let name = cap(&name, OBSERVATION_NAME, "observation name", run);
        let value = cap(&value, OBSERVATION_VALUE, "observation value", run);
        let size = name.len() + value.len();
        if total + size > OBSERVATIONS {
            groups.push(std::mem::take(&mut group));
            total = 0;
        }
        total += size;
        group.push((name, value));
    }
    groups.push(group);
    groups
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn observation_groups_keep_every_observation_in_order() {
        let list: Vec<_> = (0..1000)
            .map(|i| (format!("{i:03}_create_table"), "v".repeat(200)))
            .collect();
        let groups = observation_groups(list.clone(), "r");
        assert!(groups.len() > 1);
        for group in &groups {
            let size: usize = group.iter().map(|(n, v)| n.len() + v.len()).sum();
            assert!(size <= OBSERVATIONS, "{size}");
        }
        assert_eq!(groups.concat(), list);
        assert_eq!(observation_groups(vec![], "r"), vec![Vec::new()]);
    }

    #[test]
    fn short_text_is_kept_and_long_text_is_cut_with_a_marker() {
        assert_eq!(cap("fine", 10, "x", "r"), "fine");
        let long = "é".repeat(1000);
        let cut = cap(&long, 100, "x", "r");
        assert!(cut.len() <= 100, "{}", cut.len());
        assert!(cut.ends_with("[2000 bytes cut]"), "{cut}");
        assert!(cut.starts_with("éé"));
    }

    #[test]
    fn control_characters_do_not_reach_the_store() {
        assert_eq!(
            cap("a\u{1b}[31mb\nc\td\0", 100, "x", "r"),
            "a\u{FFFD}[31mb\nc\td\u{FFFD}"
        );
    }

    #[test]
    fn observations_stay_under_their_total() {
        let many: Vec<_> = (0..100)
            .map(|i| (format!("n{i}"), "v".repeat(5000)))
            .collect();
        let kept = observations(many, "r");
        let total: usize = kept.iter().map(|(n, v)| n.len() + v.len()).sum();
        assert!(total <= OBSERVATIONS + 64, "{total}");
        assert!(
            kept.last()
                .is_some_and(|(_, v)| v.ends_with("more observations cut"))
        );
    }
}
