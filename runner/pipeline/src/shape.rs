//! How big and how deep a pipeline file may be, checked on the raw text
//! before any YAML parser sees it: parsers take time that grows with the
//! square of the nesting depth, and a file is read whole into memory.

/// The largest pipeline file read, in bytes. Real ones are a few KB.
pub const FILE_BYTES: u64 = 1024 * 1024;

/// The deepest nesting of mappings and sequences (block or flow). A real
/// pipeline is about 8 deep.
pub const DEPTH: usize = 64;

/// The 1-based line and column where `text` first nests deeper than
/// [`DEPTH`], if it does. Block nesting is read from indentation and
/// `- ` markers, flow nesting from brackets outside quotes and comments;
/// the estimate never undercounts a real YAML structure's depth by more
/// than a constant, which is all a limit needs.
pub fn too_deep(text: &str) -> Option<(usize, usize)> {
    let mut indents: Vec<usize> = Vec::new();
    let mut flow = 0usize;
    for (number, line) in text.lines().enumerate() {
        let indent = line.len() - line.trim_start_matches(' ').len();
        let rest = &line[indent..];
        if rest.is_empty() || rest.starts_with('#') {
            continue;
        }
        if flow == 0 {
            while indents.last().is_some_and(|&top| top >= indent) {
                indents.pop();
            }
            indents.push(indent);
        }
        let mut depth = indents.len() + flow;
        let mut quote: Option<char> = None;
        let mut previous = ' ';
        let mut dashes = rest;
        while let Some(after) = dashes.strip_prefix("- ") {
            depth += 1;
            dashes = after.trim_start_matches(' ');
        }
        if depth > DEPTH {
            return Some((number + 1, indent + 1));
        }
        for (column, c) in line.char_indices() {
            match (quote, c) {
                (Some(q), c) if c == q => quote = None,
                (Some(_), _) => {}
                (None, '"' | '\'') if flow > 0 || previous == ' ' || previous == ':' => {
                    quote = Some(c)
                }
                (None, '#') if previous == ' ' || previous == '\t' => break,
                (None, '[' | '{') => {
                    flow += 1;
                    depth += 1;
                }
                (None, ']' | '}') => flow = flow.saturating_sub(1),
                _ => {}
            }
            if depth > DEPTH {
                return Some((number + 1, column + 1));
            }
            previous = c;
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn real_pipelines_pass() {
        let text = "pipeline: web\nenvironments:\n  dev:\n    steps:\n      - deploy:\n          command: [\"a\", \"[b\", '{c']  # [[[\n          env: {A: \"{\"}\n";
        assert_eq!(too_deep(text), None);
    }

    #[test]
    fn deep_flow_block_and_dash_nesting_is_found() {
        let flow = format!("a: {}1{}", "[".repeat(DEPTH + 1), "]".repeat(DEPTH + 1));
        assert_eq!(too_deep(&flow), Some((1, DEPTH + 3)));
        let block: String = (0..=DEPTH)
            .map(|i| format!("{}k{i}:\n", " ".repeat(i)))
            .collect();
        assert_eq!(too_deep(&block), Some((DEPTH + 1, DEPTH + 1)));
        let dashes = format!("a:\n  {}x\n", "- ".repeat(DEPTH + 1));
        assert_eq!(too_deep(&dashes), Some((2, 3)));
        let shallow = format!("a: {}1{}", "[".repeat(10), "]".repeat(10));
        assert_eq!(too_deep(&shallow), None);
    }
}
